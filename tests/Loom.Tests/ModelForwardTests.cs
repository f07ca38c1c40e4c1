using Loom.Inference;
using Loom.Models.Architectures;
using Loom.Models.Gguf;
using Xunit.Abstractions;

namespace Loom.Tests;

/// <summary>Session behaviour (batching, truncation, bad input) and model loading errors, on stories260K.</summary>
public class ModelForwardTests(ITestOutputHelper output)
{
    private static string StoriesPath => SharedData.PathTo("models/stories260K/stories260K.gguf");

    /// <summary>A deterministic token sequence longer than one prefill batch.</summary>
    private static int[] Tokens(int count) => Enumerable.Range(0, count).Select(i => i == 0 ? 1 : (i * 37 + 11) % 509 + 3).ToArray();

    private static float[] OneByOne(TransformerModel model, int[] tokens)
    {
        using var session = new InferenceSession(model);
        int vocab = model.Config.VocabSize;
        var logits = new float[tokens.Length * vocab];
        for (int i = 0; i < tokens.Length; i++)
            session.Evaluate([tokens[i]]).CopyTo(logits.AsSpan(i * vocab));
        return logits;
    }

    private static float MaxDifference(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        Assert.Equal(a.Length, b.Length);
        float worst = 0;
        for (int i = 0; i < a.Length; i++) worst = Math.Max(worst, Math.Abs(a[i] - b[i]));
        return worst;
    }

    [Fact]
    public void ConfigComesFromMetadata()
    {
        using var model = TransformerModel.Load(StoriesPath);
        var c = model.Config;
        Assert.Equal(("llama", 512, 2048, 64, 5, 8, 4), (c.Architecture, c.VocabSize, c.ContextLength, c.EmbeddingLength, c.LayerCount, c.HeadCount, c.HeadCountKv));
        Assert.Equal((172, 8, 8, 8, 10000f), (c.FeedForwardLength, c.KeyLength, c.ValueLength, c.RopeDimensionCount, c.RopeFreqBase));
        Assert.Equal(1e-5f, c.NormEpsilon, 1e-9f);
        Assert.Equal(RopeKind.Normal, c.Spec.Rope);
        Assert.Equal(RopeScalingType.None, c.RopeScaling);
        Assert.Null(model.Weights.PositionEmbedding);
        Assert.NotSame(model.Weights.TokenEmbedding, model.Weights.Output.Weight);
    }

    [Fact]
    public void BatchedPrefillEqualsOneByOne()
    {
        using var model = TransformerModel.Load(StoriesPath);
        int vocab = model.Config.VocabSize;
        var tokens = Tokens(InferenceSession.MaxBatchSize + 72); // crosses a batch boundary
        var reference = OneByOne(model, tokens);

        using var session = new InferenceSession(model);
        var batched = new float[reference.Length];
        session.EvaluateAll(tokens, batched);
        float worst = MaxDifference(reference, batched);

        // Mixed: a prefill, single steps, then another batch, continuing the same cache.
        session.Truncate(0);
        var mixed = new float[reference.Length];
        session.EvaluateAll(tokens.AsSpan(0, 70), mixed);
        for (int i = 70; i < 75; i++) session.EvaluateAll(tokens.AsSpan(i, 1), mixed.AsSpan(i * vocab));
        session.EvaluateAll(tokens.AsSpan(75), mixed.AsSpan(75 * vocab));
        worst = Math.Max(worst, MaxDifference(reference, mixed));

        output.WriteLine($"{tokens.Length} tokens: max |batched - one by one| = {worst:E2}");
        Assert.True(worst <= 1e-5f, $"batched logits differ from token-by-token ones by {worst}");
        Assert.Equal(tokens.Length, session.Position);
    }

    [Fact]
    public void TruncateRewindsTheCache()
    {
        using var model = TransformerModel.Load(StoriesPath);
        int vocab = model.Config.VocabSize;
        var tokens = Tokens(30);
        var reference = OneByOne(model, tokens);
        using var session = new InferenceSession(model);
        session.Evaluate(tokens.AsSpan(0, 20));
        session.Evaluate([7, 8, 9]); // a branch that is then forgotten
        session.Truncate(20);
        Assert.Equal(20, session.Position);
        var logits = session.Evaluate(tokens.AsSpan(20)).ToArray();
        Assert.True(MaxDifference(reference.AsSpan(29 * vocab, vocab), logits) <= 1e-5f);
        Assert.Throws<ArgumentOutOfRangeException>(() => session.Truncate(31));
        Assert.Throws<ArgumentOutOfRangeException>(() => session.Truncate(-1));
        session.Truncate(0);
        Assert.Equal(0, session.Position);
    }

    [Fact]
    public void BadInputGivesClearErrorsAndLeavesTheSessionUsable()
    {
        using var model = TransformerModel.Load(StoriesPath);
        using var session = new InferenceSession(model, contextSize: 8);
        Assert.Equal(8, session.ContextSize);

        var error = Assert.Throws<ArgumentOutOfRangeException>(() => session.Evaluate([1, 512]));
        Assert.Contains("512", error.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => session.Evaluate([-1]));
        Assert.Throws<ArgumentException>(() => session.Evaluate([]));
        Assert.Equal(0, session.Position);

        var overflow = Assert.Throws<InvalidOperationException>(() => session.Evaluate(Tokens(9)));
        Assert.Contains("context", overflow.Message);
        Assert.Equal(0, session.Position);
        session.Evaluate(Tokens(8));
        Assert.Throws<InvalidOperationException>(() => session.Evaluate([1]));
        Assert.Equal(8, session.Position);

        session.Truncate(0);
        Assert.Throws<ArgumentException>(() => session.EvaluateAll([1, 2], new float[512]));
        Assert.Equal(0, session.Position);
    }

    [Fact]
    public void ContextSizeIsCheckedAndDefaultsToTheModelContext()
    {
        using var model = TransformerModel.Load(StoriesPath);
        using (var session = new InferenceSession(model)) Assert.Equal(2048, session.ContextSize);
        Assert.Throws<ArgumentOutOfRangeException>(() => new InferenceSession(model, contextSize: 2049));
        Assert.Throws<ArgumentOutOfRangeException>(() => new InferenceSession(model, contextSize: -5));
    }

    [Fact]
    public void DisposedModelOrSessionIsRefused()
    {
        var model = TransformerModel.Load(StoriesPath);
        var session = new InferenceSession(model);
        session.Dispose();
        Assert.Throws<ObjectDisposedException>(() => session.Evaluate([1]));
        var other = new InferenceSession(model);
        model.Dispose();
        Assert.Throws<ObjectDisposedException>(() => other.Evaluate([1]));
        Assert.Throws<ObjectDisposedException>(() => new InferenceSession(model));
    }

    private static string EditedStories(Action<ModelGgufWriter> edit) => ModelGgufWriter.EditedCopy(StoriesPath, edit);

    private static TException LoadFails<TException>(Action<ModelGgufWriter> edit) where TException : Exception
    {
        var path = EditedStories(edit);
        try
        {
            return Assert.Throws<TException>(() => TransformerModel.Load(path).Dispose());
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void UnknownArchitectureIsNamed()
    {
        var error = LoadFails<NotSupportedException>(w => w.Set("general.architecture", "mamba9"));
        Assert.Contains("'mamba9'", error.Message);
    }

    [Fact]
    public void MissingTensorIsNamed()
    {
        var error = LoadFails<ModelFormatException>(w => w.RemoveTensor("blk.3.ffn_up.weight"));
        Assert.Contains("'blk.3.ffn_up.weight' is missing", error.Message);
    }

    [Fact]
    public void WrongShapeIsNamed()
    {
        var error = LoadFails<ModelFormatException>(w => w.Tensor("blk.0.attn_k.weight", [64, 64], new float[64 * 64]));
        Assert.Contains("'blk.0.attn_k.weight' has shape [64, 64], expected [64, 32]", error.Message);
    }

    [Fact]
    public void BadHyperParametersAreNamed()
    {
        Assert.Contains("'llama.block_count' is missing", LoadFails<ModelFormatException>(w => w.Remove("llama.block_count")).Message);
        Assert.Contains("3 key/value heads", LoadFails<ModelFormatException>(w => w.Set("llama.attention.head_count_kv", 3u)).Message);
        Assert.Contains("llama.embedding_length", LoadFails<ModelFormatException>(w => w.Set("llama.embedding_length", 0u)).Message);
        Assert.Contains("'yolo'", LoadFails<NotSupportedException>(w => w.Set("llama.rope.scaling.type", "yolo")).Message);
    }

    [Fact]
    public void HeadCountKvDefaultsToHeadCount()
    {
        // Without head_count_kv the file claims 8 KV heads, so attn_k must then be [64, 64]: the shape check says so.
        var error = LoadFails<ModelFormatException>(w => w.Remove("llama.attention.head_count_kv"));
        Assert.Contains("'blk.0.attn_k.weight' has shape [64, 32], expected [64, 64]", error.Message);
    }

    [Fact]
    public void TiedOutputReusesTheEmbedding()
    {
        var path = EditedStories(w => w.RemoveTensor("output.weight"));
        try
        {
            using var model = TransformerModel.Load(path);
            Assert.Same(model.Weights.TokenEmbedding, model.Weights.Output.Weight);
            using var session = new InferenceSession(model);
            Assert.Equal(512, session.Evaluate([1, 403]).Length);
        }
        finally
        {
            File.Delete(path);
        }
    }
}
