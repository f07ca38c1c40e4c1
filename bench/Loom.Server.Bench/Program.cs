// Serving benchmark: the seed prompts as a request mix at several concurrencies, through `loom serve`'s HTTP API
// (in-process Kestrel on 127.0.0.1), side by side with llama.cpp's batched decode (LLamaSharp) doing the same work:
// the same prompt tokens, greedy, the same token limit, continuous admission into free sequence slots.
// Usage: dotnet run -c Release --project bench/Loom.Server.Bench -- MODEL.gguf PROMPTS.txt [MAX_TOKENS] [CONCURRENCY,...]
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using LLama;
using LLama.Common;
using LLama.Native;
using Loom.Server;
using Loom.Server.Engine;

if (args.Length < 2)
{
    Console.Error.WriteLine("usage: Loom.Server.Bench MODEL.gguf PROMPTS.txt [MAX_TOKENS=64] [CONCURRENCY=1,8,32]");
    return 2;
}
string modelPath = args[0];
string[] prompts = File.ReadAllLines(args[1]).Where(l => l.Trim().Length > 0).ToArray();
int maxTokens = args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 64;
int[] concurrencies = (args.Length > 3 ? args[3] : "1,8,32").Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
const int ContextPerSequence = 512;

var rows = new List<string>();
foreach (int clients in concurrencies)
{
    var loom = await LoomRun(clients);
    rows.Add(Row("Loom (HTTP, streaming)", clients, loom));
    var llama = LlamaRun(clients);
    rows.Add(Row("llama.cpp batched decode", clients, llama));
    Console.Error.WriteLine($"{clients} clients: Loom {loom.Tokens} tokens in {loom.Seconds:F2} s, llama.cpp {llama.Tokens} tokens in {llama.Seconds:F2} s; " +
                            $"identical greedy outputs: {Enumerable.Range(0, prompts.Length).Count(i => loom.Outputs[i] == llama.Outputs[i])}/{prompts.Length}");
}
Console.WriteLine("| engine | clients | requests/s | output tokens/s | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) | ITL p99 (ms) |");
Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|---:|");
foreach (var row in rows) Console.WriteLine(row);
return 0;

string Row(string engine, int clients, RunResult r) => string.Create(CultureInfo.InvariantCulture,
    $"| {engine} | {clients} | {prompts.Length / r.Seconds:F1} | {r.Tokens / r.Seconds:F0} | {Percentile(r.Ttft, 50):F1} | {Percentile(r.Ttft, 99):F1} | {Percentile(r.Itl, 50):F2} | {Percentile(r.Itl, 99):F2} |");

static double Percentile(List<double> values, double p)
{
    if (values.Count == 0) return double.NaN;
    var sorted = values.Order().ToArray();
    return sorted[Math.Clamp((int)Math.Ceiling(p / 100 * sorted.Length) - 1, 0, sorted.Length - 1)];
}

async Task<RunResult> LoomRun(int clients)
{
    using var engine = LoomEngine.Load(modelPath, new EngineOptions { Parallel = clients, ContextSize = ContextPerSequence });
    await using var app = LoomServer.Build(engine, new ServerOptions { Host = "127.0.0.1", Port = 0 });
    await app.StartAsync();
    using var http = new HttpClient { BaseAddress = LoomServer.Addresses(app)[0], Timeout = TimeSpan.FromMinutes(10) };
    var result = new RunResult(prompts.Length);
    int next = -1;
    var clock = Stopwatch.StartNew();
    await Task.WhenAll(Enumerable.Range(0, clients).Select(async _ =>
    {
        int i;
        while ((i = Interlocked.Increment(ref next)) < prompts.Length)
        {
            string body = JsonSerializer.Serialize(new { prompt = prompts[i], max_tokens = maxTokens, temperature = 0, stream = true, stream_options = new { include_usage = true } });
            long start = Stopwatch.GetTimestamp(), last = 0;
            var ttft = 0.0;
            var gaps = new List<double>();
            var text = new StringBuilder();
            int tokens = 0;
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
            response.EnsureSuccessStatusCode();
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
            while (await reader.ReadLineAsync() is { } line)
            {
                if (!line.StartsWith("data: {", StringComparison.Ordinal)) continue;
                using var json = JsonDocument.Parse(line.AsMemory(6));
                if (json.RootElement.TryGetProperty("usage", out var usage) && usage.ValueKind == JsonValueKind.Object)
                    tokens = usage.GetProperty("completion_tokens").GetInt32();
                var choices = json.RootElement.GetProperty("choices");
                if (choices.GetArrayLength() == 0 || choices[0].GetProperty("text").GetString() is not { Length: > 0 } piece) continue;
                long now = Stopwatch.GetTimestamp();
                if (last == 0) ttft = Stopwatch.GetElapsedTime(start, now).TotalMilliseconds;
                else gaps.Add(Stopwatch.GetElapsedTime(last, now).TotalMilliseconds);
                last = now;
                text.Append(piece);
            }
            lock (result)
            {
                result.Ttft.Add(ttft);
                result.Itl.AddRange(gaps);
                result.Tokens += tokens;
                result.Outputs[i] = text.ToString();
            }
        }
    }));
    result.Seconds = clock.Elapsed.TotalSeconds;
    await app.StopAsync();
    return result;
}

RunResult LlamaRun(int clients)
{
    NativeLogConfig.llama_log_set((_, _) => { });
    var parameters = new ModelParams(modelPath)
    {
        ContextSize = (uint)(clients * ContextPerSequence),
        SeqMax = (uint)clients,
        BatchSize = (uint)(clients * ContextPerSequence),
        UBatchSize = 512,
        Threads = Environment.ProcessorCount,
        BatchThreads = Environment.ProcessorCount,
        GpuLayerCount = 0,
        FlashAttention = false,
    };
    using var weights = LLamaWeights.LoadFromFile(parameters);
    using var context = weights.CreateContext(parameters);
    using var loom = LoomEngine.Load(modelPath, new EngineOptions { Parallel = 1, ContextSize = ContextPerSequence });
    int vocab = context.Vocab.Count;
    var result = new RunResult(prompts.Length);
    var slots = new Slot?[clients];
    var batch = new LLamaBatch();
    int next = 0, done = 0;
    var clock = Stopwatch.StartNew();
    while (done < prompts.Length)
    {
        batch.Clear();
        for (int s = 0; s < clients; s++)
        {
            if (slots[s] is null && next < prompts.Length)
            {
                // The same prompt tokens Loom evaluates, so both engines do the same work.
                int[] tokens = loom.TokenizeText(prompts[next]);
                context.NativeHandle.MemorySequenceRemove((LLamaSeqId)s, -1, -1);
                var slot = new Slot(next++, Stopwatch.GetTimestamp());
                for (int t = 0; t < tokens.Length; t++) slot.LogitsIndex = batch.Add(tokens[t], t, (LLamaSeqId)s, t == tokens.Length - 1);
                slot.Position = tokens.Length;
                slots[s] = slot;
            }
            else if (slots[s] is { } running)
            {
                running.LogitsIndex = batch.Add(running.Generated[^1], running.Position++, (LLamaSeqId)s, true);
            }
        }
        var decoded = context.NativeHandle.Decode(batch);
        if (decoded != DecodeResult.Ok) throw new InvalidOperationException($"llama.cpp decode failed: {decoded}");
        long now = Stopwatch.GetTimestamp();
        for (int s = 0; s < clients; s++)
        {
            if (slots[s] is not { } slot) continue;
            var logits = context.NativeHandle.GetLogitsIth(slot.LogitsIndex);
            int best = 0;
            for (int v = 1; v < vocab; v++) if (logits[v] > logits[best]) best = v;
            bool end = loom.Codec.IsEndOfGeneration(best);
            if (!end)
            {
                if (slot.LastAt == 0) result.Ttft.Add(Stopwatch.GetElapsedTime(slot.StartedAt, now).TotalMilliseconds);
                else result.Itl.Add(Stopwatch.GetElapsedTime(slot.LastAt, now).TotalMilliseconds);
                slot.LastAt = now;
                slot.Generated.Add(best);
            }
            if (end || slot.Generated.Count == maxTokens || slot.Position >= ContextPerSequence)
            {
                result.Tokens += slot.Generated.Count;
                result.Outputs[slot.Prompt] = Encoding.UTF8.GetString(slot.Generated.SelectMany(t => loom.TokenBytes(t)).ToArray());
                slots[s] = null;
                done++;
            }
        }
    }
    result.Seconds = clock.Elapsed.TotalSeconds;
    return result;
}

sealed class Slot(int prompt, long startedAt)
{
    public int Prompt { get; } = prompt;
    public long StartedAt { get; } = startedAt;
    public long LastAt { get; set; }
    public int Position { get; set; }
    public int LogitsIndex { get; set; }
    public List<int> Generated { get; } = [];
}

sealed class RunResult(int prompts)
{
    public List<double> Ttft { get; } = [];
    public List<double> Itl { get; } = [];
    public int Tokens { get; set; }
    public double Seconds { get; set; }
    public string[] Outputs { get; } = new string[prompts];
}
