"""The API modules: mlu_model (ct), mlu_quantize, and the device and runtime behind them."""
