"""Models in and out of other frameworks (docs/interop.md).

- `torch`: ``to_torch(net)``, a cnnc network as a ``torch.nn.Module``;
- `weights`: which array of a weight file goes to which parameter, by name or by structure
  (the formats themselves are read by ``runtime/files.py``: .npz, .safetensors, .pt/.pth);
- `onnx_import`, `caffe`, `darknet`: ONNX graphs, Caffe deploy files and Darknet .cfg files
  as `.cnn` source, through `source` (layers and chains), `blocks` (repeated modules as
  blocks) and `writer` (the file).
"""
