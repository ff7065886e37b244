"""`python -m onnx_compress.cli`: the onnx-compress command line."""
import sys

from . import main

sys.exit(main())
