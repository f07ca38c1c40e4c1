using Loom.Models.Architectures;

namespace Loom.Inference;

// API CONTRACT (placeholder bodies are replaced by the model work before anything lands on main).
/// <summary>One sequence being evaluated: owns its KV cache and logits buffer.</summary>
public sealed class InferenceSession : IDisposable
{
    public InferenceSession(TransformerModel model, int contextSize = 0) => throw new NotImplementedException();

    public TransformerModel Model => throw new NotImplementedException();
    /// <summary>Number of tokens currently in the KV cache.</summary>
    public int Position => throw new NotImplementedException();
    public int ContextSize => throw new NotImplementedException();

    /// <summary>Appends tokens (one batched prefill) and returns the logits after the last one (valid until the next call).</summary>
    public ReadOnlySpan<float> Evaluate(ReadOnlySpan<int> tokens) => throw new NotImplementedException();

    /// <summary>Appends tokens and writes the logits of every position into <paramref name="logits"/> (tokens.Length × vocab).</summary>
    public void EvaluateAll(ReadOnlySpan<int> tokens, Span<float> logits) => throw new NotImplementedException();

    /// <summary>Forgets cached positions from <paramref name="position"/> on (0 clears the cache).</summary>
    public void Truncate(int position) => throw new NotImplementedException();

    public void Dispose() => throw new NotImplementedException();
}
