"""The base models heartlora adapts: timm architectures and their weights, found offline, and
their classifier heads (`backbone`); the real base's weights that a package ships
(`packaged_weights`) and their conversion from ONNX (`onnx_dinov2`)."""
