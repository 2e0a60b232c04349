"""cvahash: offline text-to-audio search for bioacoustic field stations.

The device runtime lives here (numpy, onnxruntime, a C popcount library, SQLite).
Nothing under this package imports torch or transformers; the workstation toolchain
is the separate subpackage ``cvahash.export``.
"""

__version__ = "0.1.0"
