namespace Loom.Models.Architectures;

/// <summary>A GGUF file whose metadata or tensors do not describe a usable model (missing tensor, wrong shape, bad hyper-parameter).</summary>
public sealed class ModelFormatException(string message) : Exception(message);
