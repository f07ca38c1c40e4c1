using LLama;
using LLama.Common;
using LLama.Native;

namespace Loom.Tests;

/// <summary>llama.cpp (through LLamaSharp's CPU backend) as the reference forward pass: F32 KV cache, no flash attention.</summary>
internal static class ModelLlamaCppReference
{
    private static readonly object Gate = new();

    // llama.cpp logs every load in detail; the tests only need its logits.
    static ModelLlamaCppReference() => NativeLogConfig.llama_log_set((_, _) => { });

    /// <summary>Logits of every position after one batched decode of <paramref name="tokens"/> from position 0.</summary>
    public static float[] Logits(string path, int[] tokens)
    {
        lock (Gate)
        {
            var parameters = new ModelParams(path)
            {
                ContextSize = (uint)Math.Max(tokens.Length, 32),
                BatchSize = (uint)tokens.Length,
                UBatchSize = (uint)tokens.Length,
                Threads = 1,
                GpuLayerCount = 0,
                TypeK = GGMLType.GGML_TYPE_F32,
                TypeV = GGMLType.GGML_TYPE_F32,
                FlashAttention = false,
            };
            using var weights = LLamaWeights.LoadFromFile(parameters);
            using var context = weights.CreateContext(parameters);
            var batch = new LLamaBatch();
            for (int i = 0; i < tokens.Length; i++) batch.Add(tokens[i], i, LLamaSeqId.Zero, true);
            var result = context.NativeHandle.Decode(batch);
            if (result != DecodeResult.Ok) throw new InvalidOperationException($"llama.cpp decode failed: {result}");
            int vocab = context.Vocab.Count;
            var logits = new float[tokens.Length * vocab];
            for (int i = 0; i < tokens.Length; i++)
                context.NativeHandle.GetLogitsIth(i).CopyTo(logits.AsSpan(i * vocab, vocab));
            return logits;
        }
    }
}
