"""llama.cpp's own log, captured: what it read from a file, in its words."""

import ctypes
import re


class LlamaLog:
    """Collects llama.cpp's log lines (llama-cpp-python silences them with verbose=False)."""

    def __init__(self, llama_cpp):
        self.llama_cpp, self.lines = llama_cpp, []

        @llama_cpp.llama_log_callback
        def callback(level, text, user_data):
            self.lines.append(text.decode("utf-8", "replace"))

        self.callback = callback

    def __enter__(self):
        self.llama_cpp.llama_log_set(self.callback, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc):
        from llama_cpp import _logger
        self.llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))

    def value(self, name):
        text = "".join(self.lines)
        found = re.findall(rf"{re.escape(name)}\s*=\s*(\S+)", text)
        assert found, f"{name} not in llama.cpp's log"
        return found[-1]


def load_logged(llama_cpp, path, n_ctx, **kw):
    log = LlamaLog(llama_cpp)
    with log:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, verbose=False, n_threads=2, **kw)
    return llm, log
