"""`python -m onnx_compress`: the onnx-compress command line."""
import sys

from .cli import main

sys.exit(main())
