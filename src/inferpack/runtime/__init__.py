"""The model runtime: task handlers, model loading (eager and TorchScript), the registry and the batcher."""
