using Xunit.Abstractions;
using System.Text;
using System.Text.Json;

namespace Loom.Server.Tests;

/// <summary>`loom serve` keeps its memory flat while clients hang up mid-stream round after round.</summary>
public sealed partial class ServeProcessTests
{
    private readonly ITestOutputHelper _output;

    public ServeProcessTests(ITestOutputHelper output) => _output = output;

    /// <summary>
    /// Rounds 1..8 are warm-up, so that one-time growth (tiered JIT, thread pool injection, Kestrel buffers, the GC
    /// settling its heap size) does not count: resident memory rises about 15 MiB over the first six rounds.
    /// Growth is the lowest reading of the last 6 rounds minus the lowest of the last 6 warm-up rounds: comparing
    /// troughs lets the GC collect whenever it likes (its heap swings by about 14 MiB between collections), and a
    /// leak only grows, so the last trough still holds all that leaked through round 18. Without a leak the GC heap
    /// grows by about 0 MiB and resident memory by up to about 18 MiB (the GC commits fresh regions now and then).
    /// Leak arithmetic: stories260K keeps 5 layers x 2 (K, V) x 4 KV heads x 8 dims x 4 bytes = 1,280 bytes of KV
    /// cache per position, 640 KiB per sequence at --ctx 512. Rounds 9..18 run 10 x 32 = 320 requests,
    /// 10 x 11 = 110 of them hung up: leaking one KV cache per request adds 320 x 640 KiB = 200 MiB, and leaking it
    /// only for the cancelled ones 110 x 640 KiB = 69 MiB; both are past the bounds of 20 MiB for the GC heap and
    /// 48 MiB for resident memory.
    /// </summary>
    [Fact]
    public async Task LoomServe_ClientsKilledMidStream_RoundAfterRound_MemoryReturnsToBaseline()
    {
        const int rounds = 24, warmUpRounds = 8, window = 6, clients = 32, tokens = 24;
        const long heapBound = 20L << 20, residentBound = 48L << 20;
        // The GC's first-generation budget follows the CPU's last-level cache: 32 MiB of L3 (Zen 3) gave a collection
        // every few rounds, a Xeon reporting 300 MiB none in all 24 rounds (the heap then only grows, 2.3 MiB a round,
        // garbage included). A fixed 16 MiB budget makes the troughs below mean the same on every machine.
        var gcBudget = new Dictionary<string, string> { ["DOTNET_GCgen0size"] = "0x1000000" };
        await using var server = await ServeProcess.StartAsync(["-m", RunningServer.StoriesPath, "--port", "0", "--parallel", "32", "--ctx", "512"], gcBudget);
        // No draining: a dropped response closes its connection at once, as when a client process is killed
        // (by default HttpClient reads up to 1 MiB of an abandoned response to keep the connection).
        using var http = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0 }) { BaseAddress = server.BaseUri, Timeout = TimeSpan.FromSeconds(60) };
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(50));

        var resident = new long[rounds];
        var heap = new long[rounds];
        for (int round = 0; round < rounds; round++)
        {
            var results = await Task.WhenAll(Enumerable.Range(0, clients).Select(i =>
                i % 3 == 1 ? HangUpAfterFirstEvent(http, timeout.Token) : StreamToTheEnd(http, i, tokens, timeout.Token)));
            for (int i = 0; i < clients; i++)
                if (i % 3 != 1) Assert.True(results[i] is null, $"round {round}, client {i}: {results[i]}");

            // Cancellations are asynchronous to the client: wait until the scheduler has let every slot go.
            Assert.True(await WaitForIdle(http, timeout.Token), $"round {round}: sequences still running");
            string metrics = await http.GetStringAsync("/metrics", timeout.Token);
            resident[round] = (long)RunningServer.Metric(metrics, "process_resident_memory_bytes")!.Value;
            heap[round] = (long)RunningServer.Metric(metrics, "dotnet_gc_heap_bytes")!.Value;
            _output.WriteLine($"round {round + 1}: RSS {resident[round] / 1048576.0:F1} MiB, GC heap {heap[round] / 1048576.0:F1} MiB");
        }

        double cancelled = RunningServer.Metric(await http.GetStringAsync("/metrics", timeout.Token), "loom_requests_cancelled_total")!.Value;
        _output.WriteLine($"cancelled sequences: {cancelled} of {rounds * (clients / 3 + 1)} hung-up clients");
        Assert.True(cancelled >= rounds * (clients / 3 + 1) * 3 / 4, "too few streams were cancelled mid-stream");
        // Resident memory catches native leaks, the GC heap managed ones whose pages were never touched.
        long Growth(long[] readings) => readings[^window..].Min() - readings[(warmUpRounds - window)..warmUpRounds].Min();
        long residentGrowth = Growth(resident), heapGrowth = Growth(heap);
        _output.WriteLine($"growth after warm-up: RSS {residentGrowth / 1048576.0:F1} MiB, GC heap {heapGrowth / 1048576.0:F1} MiB");
        Assert.True(residentGrowth < residentBound, $"resident memory grew {residentGrowth / 1048576.0:F1} MiB after warm-up");
        Assert.True(heapGrowth < heapBound, $"GC heap grew {heapGrowth / 1048576.0:F1} MiB after warm-up");
    }

    private static readonly string[] MemoryPrompts = ["Once upon a time", "Lily and Ben", "The little dog", "Tom had a red ball", "One day, a bird", "Sue went to the park"];

    private static StringContent Json(int i, int maxTokens, bool stream) => new(JsonSerializer.Serialize(new
    {
        prompt = MemoryPrompts[i % MemoryPrompts.Length],
        max_tokens = maxTokens,
        temperature = 0.8,
        seed = 7 + i,
        stream,
    }), Encoding.UTF8, "application/json");

    /// <summary>
    /// Greedy "Once upon a time" runs past 256 tokens without an end of text (llama2.c's reference output), so the
    /// stream is still going when its client hangs up, however fast the server is.
    /// </summary>
    private static StringContent LongStory() => new(
        """{"prompt":"Once upon a time","max_tokens":220,"temperature":0,"stream":true}""", Encoding.UTF8, "application/json");

    /// <summary>Reads a stream to its end; null when it ended with [DONE] and carried no error, else what went wrong.</summary>
    private static async Task<string?> StreamToTheEnd(HttpClient http, int i, int maxTokens, CancellationToken cancel)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = Json(i, maxTokens, stream: true) };
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancel);
        if ((int)response.StatusCode != 200) return $"status {(int)response.StatusCode}";
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(cancel));
        int events = 0;
        while (await reader.ReadLineAsync(cancel) is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
            string data = line["data: ".Length..];
            if (data == "[DONE]") return events > 0 ? null : "no events before [DONE]";
            using var doc = JsonDocument.Parse(data);
            if (doc.RootElement.TryGetProperty("error", out var error)) return $"error event: {error}";
            events++;
        }
        return "stream ended without [DONE]";
    }

    /// <summary>Asks for a long story, reads its first event and cancels the request (the connection is dropped).</summary>
    private static async Task<string?> HangUpAfterFirstEvent(HttpClient http, CancellationToken cancel)
    {
        using var kill = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = LongStory() };
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, kill.Token);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(kill.Token));
        for (int events = 0; events < 1 && await reader.ReadLineAsync(kill.Token) is { } line;)
            if (line.StartsWith("data: ", StringComparison.Ordinal)) events++;
        kill.Cancel();
        return "hung up";
    }

    private static async Task<bool> WaitForIdle(HttpClient http, CancellationToken cancel)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (DateTime.UtcNow < deadline)
        {
            string metrics = await http.GetStringAsync("/metrics", cancel);
            if (RunningServer.Metric(metrics, "loom_running_sequences") == 0 && RunningServer.Metric(metrics, "loom_kv_cache_tokens") == 0) return true;
            await Task.Delay(20, cancel);
        }
        return false;
    }
}
