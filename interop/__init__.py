"""Models in and out of other frameworks: `to_torch`, weights from safetensors and PyTorch
checkpoints, and importers that turn ONNX, Caffe and Darknet files into `.cnn` source."""
