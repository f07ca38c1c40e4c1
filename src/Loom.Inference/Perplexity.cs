using System.Diagnostics;
using System.Numerics.Tensors;
using Loom.Models.Architectures;
using Loom.Models.Tokenizers;

namespace Loom.Inference;

/// <summary>The outcome of <see cref="Perplexity.Evaluate"/>.</summary>
/// <param name="Value">exp of the mean negative log-likelihood of the scored tokens.</param>
/// <param name="Uncertainty">Standard error of <paramref name="Value"/> (llama-perplexity's "±"); NaN when it cannot be estimated.</param>
/// <param name="MeanNegativeLogLikelihood">Mean of −ln p(token) over the scored tokens, in nats.</param>
public sealed record PerplexityResult(double Value, double Uncertainty, double MeanNegativeLogLikelihood, int TokensScored, int Chunks,
    int ContextSize, TimeSpan Elapsed);

/// <summary>Reported after each chunk: how many are done and the perplexity over the tokens scored so far.</summary>
public readonly record struct PerplexityProgress(int Chunk, int Chunks, double RunningPerplexity);

/// <summary>
/// Perplexity of a model on a text, computed as llama.cpp's <c>llama-perplexity</c> does by default, so the figures
/// compare: the text is tokenized once and cut into chunks of the context size; each chunk is evaluated on an empty
/// cache with its first token replaced by BOS when the vocabulary adds one; only the second half of each chunk is
/// scored, so every scored token has at least half a context before it.
/// </summary>
public static class Perplexity
{
    /// <summary>The shortest context that leaves a token to score: half a chunk of context, then at least one prediction.</summary>
    public const int MinimumContextSize = 3;

    /// <summary>
    /// The tokens of <paramref name="documents"/> one after another, each tokenized as llama-perplexity reads its
    /// <c>-f</c> file: one trailing newline dropped, special tokens (BOS) added as the vocabulary asks, text that looks
    /// like a special token left as text.
    /// </summary>
    public static int[] Tokenize(Tokenizer tokenizer, IEnumerable<string> documents)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        var tokens = new List<int>();
        foreach (string document in documents)
            tokens.AddRange(tokenizer.Encode(document.EndsWith('\n') ? document[..^1] : document, addSpecial: true, parseSpecial: false));
        return tokens.ToArray();
    }

    /// <summary>Chunks of <paramref name="contextSize"/> tokens in <paramref name="tokenCount"/> tokens; throws when there are fewer than two.</summary>
    public static int ChunkCount(int tokenCount, int contextSize, int maxChunks = 0)
    {
        if (contextSize < MinimumContextSize)
            throw new ArgumentException($"the context size must be at least {MinimumContextSize} tokens, got {contextSize}", nameof(contextSize));
        if (maxChunks < 0) throw new ArgumentException($"the chunk limit must not be negative, got {maxChunks}", nameof(maxChunks));
        // llama-perplexity's requirement: at least two chunks' worth of text.
        if (tokenCount < 2L * contextSize)
            throw new ArgumentException($"perplexity with a context of {contextSize} needs at least {2L * contextSize} tokens, but the text has only " +
                                        $"{tokenCount}: use more text or a smaller context", nameof(tokenCount));
        int chunks = tokenCount / contextSize;
        return maxChunks > 0 ? Math.Min(chunks, maxChunks) : chunks;
    }

    /// <summary>
    /// Scores <paramref name="tokens"/> chunk by chunk. <paramref name="maxChunks"/> limits the chunks evaluated (0 = all);
    /// <paramref name="onChunk"/> hears about each finished chunk; <paramref name="cacheType"/> is the KV cache's element type.
    /// </summary>
    public static PerplexityResult Evaluate(TransformerModel model, ReadOnlySpan<int> tokens, int contextSize, int maxChunks = 0,
        Action<PerplexityProgress>? onChunk = null, CancellationToken cancellation = default, KvCacheType cacheType = KvCacheType.F16)
    {
        ArgumentNullException.ThrowIfNull(model);
        ObjectDisposedException.ThrowIf(model.IsDisposed, model);
        int modelContext = model.Config.ContextLength;
        if (contextSize > modelContext)
            throw new ArgumentException($"the context size {contextSize} exceeds the model's context length {modelContext}", nameof(contextSize));
        int chunks = ChunkCount(tokens.Length, contextSize, maxChunks);
        var tokenizer = model.Tokenizer;
        int vocab = model.Config.VocabSize;
        int? bos = tokenizer.AddBos ? tokenizer.BosId : null;
        if (bos is < 0) throw new InvalidOperationException("the vocabulary asks for a BOS token but defines none");

        var clock = Stopwatch.StartNew();
        int first = contextSize / 2;
        int scoredPerChunk = contextSize - 1 - first;
        int rowsPerPass = Math.Min(InferenceSession.MaxBatchSize, scoredPerChunk);
        var logits = new float[rowsPerPass * vocab];
        var shifted = new float[vocab];
        var chunk = new int[contextSize];
        double sum = 0, sumOfSquares = 0;
        int count = 0;
        using var session = new InferenceSession(model, contextSize, cacheType);
        for (int c = 0; c < chunks; c++)
        {
            cancellation.ThrowIfCancellationRequested();
            tokens.Slice(c * contextSize, contextSize).CopyTo(chunk);
            if (bos is { } id) chunk[0] = id;
            session.Truncate(0);
            // The first half is context only: its logits are never read, so it goes through without them.
            session.Evaluate(chunk.AsSpan(0, first));
            for (int position = first; position < contextSize - 1; position += rowsPerPass)
            {
                int rows = Math.Min(rowsPerPass, contextSize - 1 - position);
                session.EvaluateAll(chunk.AsSpan(position, rows), logits.AsSpan(0, rows * vocab));
                for (int r = 0; r < rows; r++)
                {
                    double nll = -LogProbability(logits.AsSpan(r * vocab, vocab), chunk[position + r + 1], shifted);
                    sum += nll;
                    sumOfSquares += nll * nll;
                }
            }
            count += scoredPerChunk;
            onChunk?.Invoke(new PerplexityProgress(c + 1, chunks, Math.Exp(sum / count)));
        }

        double mean = sum / count;
        double perplexity = Math.Exp(mean);
        double variance = sumOfSquares / count - mean * mean;
        // The standard error of the mean log-likelihood, carried through exp (d exp(x) = exp(x) dx), as llama.cpp reports it.
        double uncertainty = count > 1 && variance > 0 ? Math.Sqrt(variance / (count - 1)) * perplexity : double.NaN;
        return new PerplexityResult(perplexity, uncertainty, mean, count, chunks, contextSize, clock.Elapsed);
    }

    /// <summary>ln softmax(logits)[target], with the exponentials summed in double precision.</summary>
    private static double LogProbability(ReadOnlySpan<float> logits, int target, Span<float> scratch)
    {
        float max = TensorPrimitives.Max(logits);
        TensorPrimitives.Subtract(logits, max, scratch);
        TensorPrimitives.Exp(scratch, scratch);
        double total = 0;
        foreach (float e in scratch) total += e;
        return (double)logits[target] - max - Math.Log(total);
    }
}
