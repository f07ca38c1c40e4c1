using Loom.Models.Gguf;
using Loom.Models.Tokenizers;

namespace Loom.Models.Architectures;

// API CONTRACT (placeholder bodies are replaced by the model work before anything lands on main).
/// <summary>A decoder-only transformer whose weights stay in the memory-mapped GGUF file.</summary>
public sealed class TransformerModel : IDisposable
{
    public ModelConfig Config => throw new NotImplementedException();
    public Tokenizer Tokenizer => throw new NotImplementedException();
    public GgufFile File => throw new NotImplementedException();

    /// <summary>Opens a GGUF file and binds its weights; the model owns (and disposes) the file.</summary>
    public static TransformerModel Load(string path) => throw new NotImplementedException();

    public void Dispose() => throw new NotImplementedException();
}

/// <summary>Hyper-parameters read from GGUF metadata.</summary>
public sealed record ModelConfig
{
    public required string Architecture { get; init; }
    public required int VocabSize { get; init; }
    /// <summary>Trained context length ({arch}.context_length).</summary>
    public required int ContextLength { get; init; }
    public required int EmbeddingLength { get; init; }
    public required int LayerCount { get; init; }
    public required int HeadCount { get; init; }
    public required int HeadCountKv { get; init; }
    /// <summary>The Jinja chat template (tokenizer.chat_template), or null.</summary>
    public string? ChatTemplate { get; init; }
}
