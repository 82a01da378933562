# The C binding in jpeg_window.c (segshards.loaders.jpeg.decode_window wraps it).
import numpy as np

def decode_window(
    data: bytes, denominator: int, top: int, bottom: int, left: int, right: int, out: np.ndarray, /
) -> None: ...
