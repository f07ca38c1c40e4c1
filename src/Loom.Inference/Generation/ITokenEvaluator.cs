namespace Loom.Inference.Generation;

/// <summary>What generation needs from a model session: a KV cache that tokens are appended to, giving next-token logits.</summary>
public interface ITokenEvaluator
{
    int ContextSize { get; }
    int VocabSize { get; }
    /// <summary>Number of cached positions.</summary>
    int Position { get; }
    /// <summary>Appends tokens and returns the logits after the last one (valid until the next call).</summary>
    ReadOnlySpan<float> Evaluate(ReadOnlySpan<int> tokens);
    /// <summary>Forgets cached positions from <paramref name="position"/> on.</summary>
    void Truncate(int position);
}

/// <summary>Drives an <see cref="InferenceSession"/>.</summary>
public sealed class SessionEvaluator(InferenceSession session) : ITokenEvaluator
{
    public int ContextSize => session.ContextSize;
    public int VocabSize => session.Model.Config.VocabSize;
    public int Position => session.Position;
    public ReadOnlySpan<float> Evaluate(ReadOnlySpan<int> tokens) => session.Evaluate(tokens);
    public void Truncate(int position) => session.Truncate(position);
}
