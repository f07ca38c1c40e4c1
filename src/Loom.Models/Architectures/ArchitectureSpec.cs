namespace Loom.Models.Architectures;

public enum NormKind
{
    /// <summary>x / sqrt(mean(x²) + eps) · w</summary>
    RmsNorm,
    /// <summary>(x − mean) / sqrt(var + eps) · w + b</summary>
    LayerNorm,
}

public enum RopeKind
{
    /// <summary>No rotary embedding (positions come from a learned table).</summary>
    None,
    /// <summary>ggml's "normal" mode: rotates adjacent pairs (x[2i], x[2i+1]).</summary>
    Normal,
    /// <summary>ggml's NeoX mode: rotates (x[i], x[i + n_rot/2]).</summary>
    NeoX,
}

public enum FeedForwardKind
{
    /// <summary>down(silu(gate(x)) · up(x))</summary>
    GatedSilu,
    /// <summary>down(gelu(up(x))) with ggml's tanh approximation.</summary>
    Gelu,
}

/// <summary>
/// What distinguishes one decoder-only architecture from another. One forward pass serves them all; an architecture is
/// only this description (plus which optional tensors its files carry, e.g. biases or a fused QKV weight).
/// </summary>
public sealed record ArchitectureSpec(
    string Name,
    NormKind Norm,
    RopeKind Rope,
    FeedForwardKind FeedForward,
    bool LearnedPositions = false,
    bool QkNorm = false)
{
    private static readonly ArchitectureSpec[] Known =
    [
        // Llama 1/2/3, TinyLlama, SmolLM, Mistral: llama.cpp's converter permutes Q/K so the adjacent-pair rotation applies.
        new("llama", NormKind.RmsNorm, RopeKind.Normal, FeedForwardKind.GatedSilu),
        // Qwen2/2.5: Q/K/V carry biases (bound when present, as for every linear layer).
        new("qwen2", NormKind.RmsNorm, RopeKind.NeoX, FeedForwardKind.GatedSilu),
        // Qwen3: per-head RMSNorm on Q and K before the rotation.
        new("qwen3", NormKind.RmsNorm, RopeKind.NeoX, FeedForwardKind.GatedSilu, QkNorm: true),
        new("gpt2", NormKind.LayerNorm, RopeKind.None, FeedForwardKind.Gelu, LearnedPositions: true),
    ];

    public static IReadOnlyList<string> SupportedNames { get; } = Known.Select(a => a.Name).ToArray();

    public static ArchitectureSpec For(string architecture) =>
        Known.FirstOrDefault(a => a.Name == architecture)
        ?? throw new NotSupportedException(
            $"model architecture '{architecture}' is not supported (supported: {string.Join(", ", SupportedNames)})");
}
