using System.Text.Json;
using Loom.Server.Engine;

namespace Loom.Server.Tests;

/// <summary>Continuous batching seen from clients: many streams at once, clients that vanish, a full queue.</summary>
public sealed class ConcurrencyTests
{
    private static readonly string[] Openings =
    [
        "Once upon a time", "Lily and Ben", "The little dog", "Tom had a red ball", "One day, a bird", "Sue went to the park",
        "There was a big tree", "The sun was hot", "Mom said", "A cat named Max", "In a small house", "The boy ran",
    ];

    private static string Request(int i, int maxTokens) => JsonSerializer.Serialize(new
    {
        prompt = Openings[i % Openings.Length],
        max_tokens = maxTokens,
        temperature = 0.8,
        seed = 1000 + i,
        stream = true,
    });

    private static string Text(List<JsonDocument> events) =>
        string.Concat(events.Select(e => e.RootElement.GetProperty("choices"))
            .Where(c => c.GetArrayLength() > 0)
            .Select(c => c[0].GetProperty("text").GetString()));

    [Fact]
    public async Task ThirtyTwoConcurrentStreams_EachGetWhatItGetsAlone()
    {
        await using var server = await RunningServer.StartAsync(new EngineOptions { Parallel = 32, ContextSize = 256 });
        const int clients = 32, tokens = 40;
        var alone = new string[clients];
        for (int i = 0; i < clients; i++)
        {
            var (events, done) = await server.StreamAsync("/v1/completions", Request(i, tokens));
            Assert.True(done);
            alone[i] = Text(events);
        }

        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        var together = await Task.WhenAll(Enumerable.Range(0, clients).Select(async i =>
        {
            var (events, done) = await server.StreamAsync("/v1/completions", Request(i, tokens), timeout.Token);
            Assert.True(done);
            return Text(events);
        }));
        for (int i = 0; i < clients; i++) Assert.Equal(alone[i], together[i]);
        // Sequences with the same opening but different seeds differ: the comparison is not vacuous.
        Assert.NotEqual(alone[0], alone[Openings.Length]);
        Assert.True(await server.WaitForMetricAsync("loom_running_sequences", 0, TimeSpan.FromSeconds(10)));
        Assert.True(await server.WaitForMetricAsync("loom_kv_cache_tokens", 0, TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public async Task ClientsKilledMidStream_FreeTheirSlots_WhileOthersFinishUnchanged()
    {
        // A random-weight Llama with a long context: the hung-up clients ask for 3,000 tokens, far more than the server
        // can generate before it notices them go (stories260K, at most 512 positions, can finish first on a fast CPU).
        string modelPath = Path.Combine(Path.GetTempPath(), $"loom-kill-{Guid.NewGuid():N}.gguf");
        using (var vocabulary = Loom.Models.Gguf.GgufFile.Open(Loom.Tests.SharedData.PathTo("vocab/llama.cpp/ggml-vocab-llama-spm.gguf")))
        {
            // 32,000 tokens, so a random model almost never samples end-of-sequence before its client hangs up.
            var encoder = new Loom.Training.GgufTokenEncoder(vocabulary);
            var model = new Loom.Training.Decoder(new Loom.Training.ModelShape
            {
                VocabSize = encoder.VocabSize, Dim = 256, Layers = 2, Heads = 4, KvHeads = 2, Hidden = 512, Context = 4096,
            });
            model.Initialize(5);
            Loom.Training.GgufExport.Write(modelPath, model, encoder, Loom.Training.ExportPrecision.F32);
        }
        try
        {
            await KillClientsMidStream(modelPath);
        }
        finally
        {
            File.Delete(modelPath);
        }
    }

    private static async Task KillClientsMidStream(string modelPath)
    {
        await using var server = await RunningServer.StartAsync(new EngineOptions { Parallel = 8, ContextSize = 4096 }, modelPath: modelPath);
        const int clients = 12, tokens = 48;
        var alone = new string[clients];
        for (int i = 0; i < clients; i += 2) alone[i] = Text((await server.StreamAsync("/v1/completions", Request(i, tokens))).Events);

        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        var runs = Enumerable.Range(0, clients).Select(async i =>
        {
            if (i % 2 == 0)
            {
                var (events, done) = await server.StreamAsync("/v1/completions", Request(i, tokens), timeout.Token);
                Assert.True(done);
                return Text(events);
            }
            // Odd clients ask for a long story, read a few events and hang up.
            using var kill = CancellationTokenSource.CreateLinkedTokenSource(timeout.Token);
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(Request(i, 3000), System.Text.Encoding.UTF8, "application/json") };
            using var response = await server.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, kill.Token);
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(kill.Token));
            for (int events = 0; events < 3 && await reader.ReadLineAsync(kill.Token) is { } line;)
                if (line.StartsWith("data: ", StringComparison.Ordinal)) events++;
            kill.Cancel();
            return null;
        }).ToArray();
        var results = await Task.WhenAll(runs);
        for (int i = 0; i < clients; i += 2) Assert.Equal(alone[i], results[i]);

        // Every slot and cached position comes back; the server keeps serving.
        Assert.True(await server.WaitForMetricAsync("loom_running_sequences", 0, TimeSpan.FromSeconds(10)));
        Assert.True(await server.WaitForMetricAsync("loom_kv_cache_tokens", 0, TimeSpan.FromSeconds(10)));
        // Each hung-up client asked for 3,000 tokens and read 3 events, so the server must have seen nearly all of them go
        // (one may end early by sampling end-of-sequence).
        double? cancelled = RunningServer.Metric(await server.Http.GetStringAsync("/metrics"), "loom_requests_cancelled_total");
        Assert.True(cancelled >= clients / 2 - 1, $"the server saw {cancelled} of {clients / 2} hung-up clients go");
        Assert.Equal(alone[0], Text((await server.StreamAsync("/v1/completions", Request(0, tokens))).Events));
    }

    [Fact]
    public async Task PastTheQueue_RequestsGet429WithAnOpenAiError()
    {
        await using var server = await RunningServer.StartAsync(new EngineOptions { Parallel = 1, ContextSize = 256, QueueCapacity = 1 });
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        var replies = await Task.WhenAll(Enumerable.Range(0, 12).Select(i =>
            server.PostAsync("/v1/completions", JsonSerializer.Serialize(new { prompt = Openings[i], max_tokens = 64, temperature = 0 }), timeout.Token)));
        var refused = replies.Where(r => r.Status == 429).ToList();
        Assert.NotEmpty(refused);
        Assert.All(replies, r => Assert.Contains(r.Status, new[] { 200, 429 }));
        foreach (var (_, body) in refused)
        {
            var error = body.RootElement.GetProperty("error");
            Assert.Equal("rate_limit_error", error.GetProperty("type").GetString());
            Assert.Equal("rate_limit_exceeded", error.GetProperty("code").GetString());
        }
        Assert.True(RunningServer.Metric(await server.Http.GetStringAsync("/metrics"), "loom_requests_rejected_total") >= refused.Count);
        var (status, _) = await server.PostAsync("/v1/completions", """{"prompt":"Once upon a time","max_tokens":4}""");
        Assert.Equal(200, status);
    }
}
