using System.Diagnostics;
using System.Text;
using LLama;
using LLama.Common;
using LLama.Native;

namespace Loom.Bench.SideBySide;

/// <summary>
/// The end-to-end test: every prompt of a file, a fixed number of new tokens each (end-of-generation ignored),
/// greedy, as many sequences decoded together as the configuration says. Loom runs as the `loom generate` command
/// (its process's wall time: start-up, model load, tokenization, generation, writing JSON lines); llama.cpp runs
/// in this process with the same steps (model load, tokenization, continuous batching with one KV stream per sequence,
/// greedy choice, detokenization), timed from the model load on.
/// </summary>
internal static class EndToEnd
{
    public sealed record Result(double Seconds, int PromptTokens, int GeneratedTokens)
    {
        public double TokensPerSecond => GeneratedTokens / Seconds;
    }

    public static Result RunLoom(string loomDll, string model, string prompts, int tokens, int parallel, int threads)
    {
        string output = Path.Combine(Path.GetTempPath(), $"loom-e2e-{Environment.ProcessId}.jsonl");
        var start = new ProcessStartInfo("dotnet")
        {
            ArgumentList =
            {
                loomDll, "generate", "-m", model, "--prompts", prompts, "--max-tokens", tokens.ToString(), "--ignore-eos",
                "--temperature", "0", "--parallel", parallel.ToString(), "--threads", threads.ToString(), "--cache-type", "f16", "--output", output,
            },
            RedirectStandardError = true,
            RedirectStandardOutput = true,
        };
        var clock = Stopwatch.StartNew();
        using var process = Process.Start(start) ?? throw new InvalidOperationException("could not start loom");
        var stderr = process.StandardError.ReadToEndAsync();
        process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        double seconds = clock.Elapsed.TotalSeconds;
        if (process.ExitCode != 0) throw new InvalidOperationException($"loom generate failed ({process.ExitCode}): {stderr.Result}");
        int promptTokens = 0, generated = 0;
        foreach (var line in File.ReadLines(output))
        {
            using var record = System.Text.Json.JsonDocument.Parse(line);
            if (record.RootElement.TryGetProperty("error", out var error))
                throw new InvalidOperationException($"loom generate reported an error: {error}");
            promptTokens += record.RootElement.GetProperty("prompt_tokens").GetInt32();
            generated += record.RootElement.GetProperty("generated_tokens").GetInt32();
        }
        File.Delete(output);
        return new Result(seconds, promptTokens, generated);
    }

    public static Result RunLlamaCpp(string model, string[] prompts, int tokens, int parallel, int threads, bool flashAttention)
    {
        var clock = Stopwatch.StartNew();
        using var weights = LLamaWeights.LoadFromFile(new ModelParams(model) { GpuLayerCount = 0 });
        bool addBos = weights.Vocab.ShouldAddBOS;
        // All prompts are tokenized first (as loom generate does), so the context can be sized for the longest.
        var tokenized = prompts.Select(p => weights.Tokenize(p, addBos, special: true, Encoding.UTF8)).ToArray();
        int longest = tokenized.Max(t => t.Length);
        int perSequence = longest + tokens + 8;
        var parameters = new ModelParams(model)
        {
            GpuLayerCount = 0,
            ContextSize = (uint)(perSequence * parallel),
            BatchSize = (uint)(parallel * (longest + 1)),
            UBatchSize = (uint)(parallel * (longest + 1)),
            SeqMax = (uint)parallel,
            KVUnified = false,
            Threads = threads,
            BatchThreads = threads,
            FlashAttention = flashAttention,
            TypeK = GGMLType.GGML_TYPE_F16,
            TypeV = GGMLType.GGML_TYPE_F16,
        };
        using var context = weights.CreateContext(parameters);
        var batch = new LLamaBatch();
        int vocab = weights.Vocab.Count;
        // As llama.cpp's --ignore-eos: end-of-generation tokens get a −∞ bias, so they are never chosen.
        var endOfGeneration = new[] { weights.Vocab.EOS, weights.Vocab.EOT }.Where(t => t is not null).Select(t => (int)t!.Value).ToArray();
        var slots = new Slot?[parallel];
        var outputs = new string[prompts.Length];
        int next = 0, done = 0, generated = 0, promptTokens = 0;
        while (done < prompts.Length)
        {
            batch.Clear();
            for (int s = 0; s < parallel; s++)
            {
                if (slots[s] is null && next < prompts.Length)
                {
                    var prompt = tokenized[next];
                    var slot = new Slot(next++, new StreamingTokenDecoder(Encoding.UTF8, weights));
                    for (int i = 0; i < prompt.Length; i++) slot.LogitIndex = batch.Add(prompt[i], i, (LLamaSeqId)s, i == prompt.Length - 1);
                    slot.Position = prompt.Length;
                    promptTokens += prompt.Length;
                    slots[s] = slot;
                }
                else if (slots[s] is { } running)
                {
                    running.LogitIndex = batch.Add(running.Last, running.Position++, (LLamaSeqId)s, true);
                }
            }
            var result = context.NativeHandle.Decode(batch);
            if (result != DecodeResult.Ok) throw new InvalidOperationException($"llama.cpp decode failed: {result}");
            for (int s = 0; s < parallel; s++)
            {
                if (slots[s] is not { } slot) continue;
                var logits = context.NativeHandle.GetLogitsIth(slot.LogitIndex);
                int best = 0;
                foreach (int token in endOfGeneration) logits[token] = float.NegativeInfinity;
                for (int v = 1; v < vocab; v++) if (logits[v] > logits[best]) best = v;
                slot.Last = best;
                slot.Decoder.Add(best);
                generated++;
                if (++slot.Count < tokens) continue;
                outputs[slot.Prompt] = slot.Decoder.Read();
                context.NativeHandle.MemorySequenceRemove((LLamaSeqId)s, 0, -1);
                slots[s] = null;
                done++;
            }
        }
        return new Result(clock.Elapsed.TotalSeconds, promptTokens, generated);
    }

    private sealed class Slot(int prompt, StreamingTokenDecoder decoder)
    {
        public int Prompt { get; } = prompt;
        public StreamingTokenDecoder Decoder { get; } = decoder;
        public int Position { get; set; }
        public int LogitIndex { get; set; }
        public int Last { get; set; }
        public int Count { get; set; }
    }
}
