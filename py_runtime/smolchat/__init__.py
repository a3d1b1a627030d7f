"""SmolChat's chat engine: SmolLM2-135M-Instruct chat in pure Python, for Pyodide and CPython.

    from smolchat import ChatEngine
    from smolchat.backend_onnx import OnnxBackend      # CPython only (numpy, onnxruntime)
    engine = ChatEngine(OnnxBackend.load("models/smollm2-135m-instruct-compact"))

This package has no runtime dependencies: importing it (and everything but backend_onnx)
needs only the standard library, so the same files run in Pyodide.
"""

__version__ = "0.1.0"

from .engine import ChatEngine, Reply, ReplyStream  # noqa: E402
from .errors import SmolChatError  # noqa: E402
from .settings import GenerationSettings  # noqa: E402

__all__ = ["ChatEngine", "Reply", "ReplyStream", "GenerationSettings", "SmolChatError",
           "__version__"]
