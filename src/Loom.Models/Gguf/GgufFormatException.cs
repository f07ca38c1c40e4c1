namespace Loom.Models.Gguf;

/// <summary>A GGUF file that cannot be read: truncated, malformed, or using something Loom does not support.</summary>
public sealed class GgufFormatException(string message) : Exception(message);
