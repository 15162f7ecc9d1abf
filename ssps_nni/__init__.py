"""ssps-nni: mixed-precision quantization policy search (SSPS) for NNI and OpenMMLab."""

__version__ = "0.1.0"
