"""Resizing: upsampling, transposed convolution and adaptive pooling (spec section 9).

(Being written: the family's layers and primitives land here.)
"""

LAYERS = []
PRIMITIVES = []
