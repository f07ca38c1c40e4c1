using System.Collections.Concurrent;
using System.Text;
using LLama;
using LLama.Common;
using LLama.Native;
using Loom.Tests.Conformance;

namespace Loom.Tests;

/// <summary>
/// llama.cpp (through LLamaSharp's native backend) as the reference Loom is measured against: tokenization, logits at
/// every position with an F32 KV cache and flash attention off, greedy generation, vocabulary-only loads, and
/// llama.cpp's own quantizer. Every test that touches llama.cpp goes through here, so the native library is set up and
/// its log captured in one place.
/// </summary>
public sealed class LlamaCppReference : IDisposable
{
    private static readonly ConcurrentQueue<string> RecentLog = new();
    private static readonly Lazy<bool> NativeLoaded = new(LoadNative);

    private readonly LLamaWeights _weights;

    public string Path { get; }
    public int VocabSize { get; }
    public int BosId { get; }
    public int EosId { get; }
    public int ContextSize { get; }

    /// <summary>Loads a model. <paramref name="contextSize"/> bounds the sequences evaluated later.</summary>
    public LlamaCppReference(string path, int contextSize = 256)
    {
        EnsureNativeLibrary();
        Path = path;
        ContextSize = contextSize;
        try
        {
            _weights = LLamaWeights.LoadFromFile(new ModelParams(path) { GpuLayerCount = 0, ContextSize = (uint)contextSize });
        }
        catch (Exception e)
        {
            throw new InvalidOperationException($"llama.cpp could not load {path}: {e.Message}\nllama.cpp log:\n{LogTail()}", e);
        }
        var vocab = _weights.NativeHandle.Vocab;
        VocabSize = vocab.Count;
        BosId = vocab.BOS is { } bos ? (int)bos : -1;
        EosId = vocab.EOS is { } eos ? (int)eos : -1;
    }

    /// <summary>
    /// Loads llama.cpp's native library and installs the log capture, once per process whichever test comes first
    /// (Lazy makes concurrent first calls wait for one setup). Entry points such as the quantizer and the samplers do
    /// not trigger LLamaSharp's library resolution by themselves (they throw DllNotFoundException), so every use goes
    /// through here first.
    /// </summary>
    public static void EnsureNativeLibrary() => _ = NativeLoaded.Value;

    /// <summary>
    /// The log callback is process-wide: it is installed only here, so llama.cpp's chatter stays out of the test output
    /// but is remembered, and a failure can say what went wrong.
    /// </summary>
    private static bool LoadNative()
    {
        NativeApi.llama_empty_call();
        NativeLogConfig.llama_log_set(LogCallback);
        return true;
    }

    private static readonly NativeLogConfig.LLamaLogCallback LogCallback = (level, message) =>
    {
        if (level is LLamaLogLevel.Debug) return;
        RecentLog.Enqueue(message);
        while (RecentLog.Count > 2000) RecentLog.TryDequeue(out _);
    };

    private static string LogTail() => string.Concat(RecentLog.TakeLast(40));

    /// <summary>Recent llama.cpp log lines (info and above) that contain <paramref name="text"/>.</summary>
    public static IReadOnlyList<string> LogLinesContaining(string text) => RecentLog.Where(l => l.Contains(text, StringComparison.Ordinal)).ToList();

    /// <summary>Loads only the vocabulary of <paramref name="path"/> (no weights), for tokenizer comparisons.</summary>
    public static LLamaWeights LoadVocabulary(string path)
    {
        EnsureNativeLibrary();
        return LLamaWeights.LoadFromFile(new ModelParams(path) { VocabOnly = true, GpuLayerCount = 0 });
    }

    public int[] Tokenize(string text, bool addSpecial, bool parseSpecial) =>
        _weights.Tokenize(text, addSpecial, parseSpecial, Encoding.UTF8).Select(t => (int)t).ToArray();

    /// <summary>
    /// Logits at every position of <paramref name="tokens"/> evaluated as one batch on an empty cache (tokens × vocab),
    /// with keys and values cached in F32 or, when <paramref name="f16Cache"/> is set, in F16 (llama.cpp's default).
    /// </summary>
    public float[] EvaluateAll(IReadOnlyList<int> tokens, bool f16Cache = false)
    {
        using var context = CreateContext(tokens.Count, f16Cache ? GGMLType.GGML_TYPE_F16 : GGMLType.GGML_TYPE_F32);
        var batch = new LLamaBatch();
        for (int i = 0; i < tokens.Count; i++) batch.Add(tokens[i], i, LLamaSeqId.Zero, logits: true);
        Decode(context, batch);
        var logits = new float[tokens.Count * VocabSize];
        for (int i = 0; i < tokens.Count; i++) context.NativeHandle.GetLogitsIth(i).CopyTo(logits.AsSpan(i * VocabSize, VocabSize));
        return logits;
    }

    /// <summary>Greedy (argmax, lowest id on ties) continuation of <paramref name="prompt"/>: exactly <paramref name="count"/> tokens.</summary>
    public int[] GenerateGreedy(IReadOnlyList<int> prompt, int count)
    {
        using var context = CreateContext(prompt.Count + count);
        var batch = new LLamaBatch();
        for (int i = 0; i < prompt.Count; i++) batch.Add(prompt[i], i, LLamaSeqId.Zero, logits: i == prompt.Count - 1);
        Decode(context, batch);
        var output = new int[count];
        for (int step = 0; step < count; step++)
        {
            int next = Comparison.ArgMax(context.NativeHandle.GetLogitsIth(batch.TokenCount - 1));
            output[step] = next;
            if (step == count - 1) break;
            batch.Clear();
            batch.Add(next, prompt.Count + step, LLamaSeqId.Zero, logits: true);
            Decode(context, batch);
        }
        return output;
    }

    private LLamaContext CreateContext(int tokens, GGMLType cacheType = GGMLType.GGML_TYPE_F32)
    {
        if (tokens > ContextSize) throw new ArgumentException($"{tokens} tokens do not fit the reference context of {ContextSize}");
        var parameters = new ModelParams(Path)
        {
            ContextSize = (uint)ContextSize,
            BatchSize = (uint)ContextSize,
            UBatchSize = (uint)ContextSize,
            TypeK = cacheType,
            TypeV = cacheType,
            FlashAttention = false,
            Threads = Math.Min(Environment.ProcessorCount, 4),
            BatchThreads = Math.Min(Environment.ProcessorCount, 4),
        };
        return _weights.CreateContext(parameters);
    }

    private static void Decode(LLamaContext context, LLamaBatch batch)
    {
        var result = context.NativeHandle.Decode(batch);
        if (result != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode failed: {result}\nllama.cpp log:\n{LogTail()}");
    }

    /// <summary>Quantizes a GGUF file with llama.cpp's quantizer (as llama-quantize does, output tensor included).</summary>
    public static void Quantize(string source, string destination, LLamaFtype type)
    {
        EnsureNativeLibrary();
        bool ok = LLamaQuantizer.Quantize(source, destination, type, nthread: Math.Min(Environment.ProcessorCount, 4), allowRequantize: false, quantizeOutputTensor: true);
        if (!ok) throw new InvalidOperationException($"llama.cpp failed to quantize {source} to {type}\nllama.cpp log:\n{LogTail()}");
    }

    public void Dispose() => _weights.Dispose();
}
