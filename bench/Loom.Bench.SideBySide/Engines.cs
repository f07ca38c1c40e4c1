using System.Diagnostics;
using LLama;
using LLama.Common;
using LLama.Native;
using Loom.Core.Threading;
using Loom.Inference;
using Loom.Models.Architectures;

namespace Loom.Bench.SideBySide;

/// <summary>One inference engine under test; each method runs from an empty cache and returns tokens per second.</summary>
internal interface IEngine : IDisposable
{
    string Name { get; }
    /// <summary>Prefills the first <paramref name="count"/> tokens in one call.</summary>
    double Prefill(int[] tokens, int count, int threads);
    /// <summary>
    /// Decodes tokens [start, start + count) one call each, continuing the sequence (from an empty cache when start is 0);
    /// returns the seconds taken.
    /// </summary>
    double DecodeSegment(int[] tokens, int start, int count, int threads);
    /// <summary>Decodes <paramref name="steps"/> tokens in each of <paramref name="sequences"/> sequences, one call per step; returns generated tokens/s.</summary>
    double Batched(int[] tokens, int sequences, int steps, int threads);
}

internal sealed class LoomEngine : IEngine
{
    private readonly TransformerModel _model;
    private readonly InferenceSession _session;
    private readonly Dictionary<int, (BatchedInference Batch, BatchEntry[] Entries, float[] Logits)> _batches = [];
    private readonly int _batchContext;
    private int _threads;

    public LoomEngine(string path, int sessionContext, int batchContext, bool hugePages)
    {
        _model = TransformerModel.Load(path, new ModelLoadOptions { HugePages = hugePages });
        _session = new InferenceSession(_model, sessionContext, KvCacheType.F16);
        _batchContext = batchContext;
    }

    public string Name => "Loom";

    /// <summary>Bytes of weights a decoded token reads (the same file, so the same for llama.cpp).</summary>
    public long WeightBytesPerToken => _model.WeightBytesPerToken;

    public double Prefill(int[] tokens, int count, int threads)
    {
        UseThreads(threads);
        _session.Truncate(0);
        long start = Stopwatch.GetTimestamp();
        _session.Evaluate(tokens.AsSpan(0, count));
        return count / Stopwatch.GetElapsedTime(start).TotalSeconds;
    }

    public double DecodeSegment(int[] tokens, int start, int count, int threads)
    {
        UseThreads(threads);
        if (start == 0) _session.Truncate(0);
        long clock = Stopwatch.GetTimestamp();
        for (int i = start; i < start + count; i++) _session.Evaluate(tokens.AsSpan(i, 1));
        return Stopwatch.GetElapsedTime(clock).TotalSeconds;
    }

    public double Batched(int[] tokens, int sequences, int steps, int threads)
    {
        UseThreads(threads);
        if (!_batches.TryGetValue(sequences, out var state))
        {
            state = (new BatchedInference(_model, sequences, _batchContext, KvCacheType.F16), new BatchEntry[sequences], new float[(long)sequences * _model.Config.VocabSize]);
            _batches[sequences] = state;
        }
        for (int s = 0; s < sequences; s++) state.Batch.Truncate(s, 0);
        long start = Stopwatch.GetTimestamp();
        for (int step = 0; step < steps; step++)
        {
            for (int s = 0; s < sequences; s++)
                state.Entries[s] = new BatchEntry(s, new ReadOnlyMemory<int>(tokens, (step + s) % tokens.Length, 1));
            state.Batch.Evaluate(state.Entries, state.Logits);
        }
        return (long)sequences * steps / Stopwatch.GetElapsedTime(start).TotalSeconds;
    }

    private void UseThreads(int threads)
    {
        if (threads == _threads) return;
        LoomThreadPool.SetSharedThreadCount(threads);
        _threads = threads;
    }

    public void Dispose()
    {
        foreach (var state in _batches.Values) state.Batch.Dispose();
        _session.Dispose();
        _model.Dispose();
    }
}

/// <summary>
/// llama.cpp through LLamaSharp: weights memory-mapped once; one context per (test kind, threads, flash attention),
/// with threads = threads_batch, the whole prompt in one ubatch, and one KV stream per sequence for batches.
/// </summary>
internal sealed class LlamaCppEngine : IEngine
{
    private readonly LLamaWeights _weights;
    private readonly string _path;
    private readonly int _sessionContext;
    private readonly int _batchContext;
    private readonly Dictionary<(string Kind, int Sequences, int Threads, bool Flash), LLamaContext> _contexts = [];
    private readonly LLamaBatch _batch = new();

    public LlamaCppEngine(string path, int sessionContext, int batchContext)
    {
        _path = path;
        _sessionContext = sessionContext;
        _batchContext = batchContext;
        _weights = LLamaWeights.LoadFromFile(new ModelParams(path) { GpuLayerCount = 0 });
    }

    public string Name => "llama.cpp";

    /// <summary>Whether the next calls use flash attention (the harness tries both and keeps the faster).</summary>
    public bool FlashAttention { get; set; }

    public double Prefill(int[] tokens, int count, int threads)
    {
        var context = Context("session", 1, threads, _sessionContext, _sessionContext);
        Clear(context);
        _batch.Clear();
        for (int i = 0; i < count; i++) _batch.Add(tokens[i], i, LLamaSeqId.Zero, i == count - 1);
        long start = Stopwatch.GetTimestamp();
        Run(context);
        return count / Stopwatch.GetElapsedTime(start).TotalSeconds;
    }

    public double DecodeSegment(int[] tokens, int start, int count, int threads)
    {
        var context = Context("session", 1, threads, _sessionContext, _sessionContext);
        if (start == 0) Clear(context);
        long clock = Stopwatch.GetTimestamp();
        for (int i = start; i < start + count; i++)
        {
            _batch.Clear();
            _batch.Add(tokens[i], i, LLamaSeqId.Zero, true);
            Run(context);
        }
        return Stopwatch.GetElapsedTime(clock).TotalSeconds;
    }

    public double Batched(int[] tokens, int sequences, int steps, int threads)
    {
        var context = Context("batch", sequences, threads, _batchContext * sequences, sequences);
        Clear(context);
        long start = Stopwatch.GetTimestamp();
        for (int step = 0; step < steps; step++)
        {
            _batch.Clear();
            for (int s = 0; s < sequences; s++) _batch.Add(tokens[(step + s) % tokens.Length], step, (LLamaSeqId)s, true);
            Run(context);
        }
        return (long)sequences * steps / Stopwatch.GetElapsedTime(start).TotalSeconds;
    }

    private LLamaContext Context(string kind, int sequences, int threads, int contextSize, int batchSize)
    {
        var key = (kind, sequences, threads, FlashAttention);
        if (_contexts.TryGetValue(key, out var context)) return context;
        var parameters = new ModelParams(_path)
        {
            GpuLayerCount = 0,
            ContextSize = (uint)contextSize,
            BatchSize = (uint)batchSize,
            UBatchSize = (uint)batchSize,
            SeqMax = (uint)sequences,
            KVUnified = false,
            Threads = threads,
            BatchThreads = threads,
            FlashAttention = FlashAttention,
            TypeK = GGMLType.GGML_TYPE_F16,
            TypeV = GGMLType.GGML_TYPE_F16,
        };
        context = _weights.CreateContext(parameters);
        _contexts[key] = context;
        return context;
    }

    private void Run(LLamaContext context)
    {
        var result = context.NativeHandle.Decode(_batch);
        if (result != DecodeResult.Ok) throw new InvalidOperationException($"llama.cpp decode failed: {result}");
        // Decode may return before the CPU backend finishes; the timing must include the work.
        context.NativeHandle.Synchronize();
    }

    private static void Clear(LLamaContext context) => context.NativeHandle.MemoryClear();

    public void Dispose()
    {
        foreach (var context in _contexts.Values) context.Dispose();
        _weights.Dispose();
    }
}
