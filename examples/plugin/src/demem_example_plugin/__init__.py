"""An example demem plugin (see examples/plugin/README.md): RelaxLoss as a training method, on
clean batches and on PGD-AT's examples; LeNet-5 as an architecture; the difficulty-calibrated loss
attack. Nothing here is imported by demem until a spec or command looks one of the names up."""

__version__ = "0.1.0"
