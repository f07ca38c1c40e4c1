using System.ClientModel;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Loom.Inference;
using Loom.Inference.Generation;
using Loom.Inference.Sampling;
using Loom.Models.Architectures;
using Loom.Server;
using Loom.Server.Engine;
using Loom.Tests;
using Microsoft.AspNetCore.Builder;
using OpenAI;

namespace Loom.Server.Tests;

/// <summary>A Kestrel server on 127.0.0.1 with a free port, over its own engine; stopped on dispose.</summary>
public sealed class RunningServer : IAsyncDisposable
{
    private readonly LoomEngine _engine;
    private readonly WebApplication _app;

    private RunningServer(LoomEngine engine, WebApplication app, Uri baseUri, string? apiKey)
    {
        _engine = engine;
        _app = app;
        BaseUri = baseUri;
        ApiKey = apiKey;
        Http = new HttpClient { BaseAddress = baseUri, Timeout = TimeSpan.FromSeconds(120) };
        if (apiKey is not null) Http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", apiKey);
    }

    public static string StoriesPath => SharedData.PathTo("models/stories260K/stories260K.gguf");

    public static async Task<RunningServer> StartAsync(EngineOptions options, string? apiKey = null, string? modelPath = null)
    {
        var engine = LoomEngine.Load(modelPath ?? StoriesPath, options);
        try
        {
            var app = LoomServer.Build(engine, new ServerOptions { Host = "127.0.0.1", Port = 0, ApiKey = apiKey });
            await app.StartAsync();
            var address = LoomServer.Addresses(app).Single();
            Assert.Equal("127.0.0.1", address.Host);
            return new RunningServer(engine, app, address, apiKey);
        }
        catch
        {
            engine.Dispose();
            throw;
        }
    }

    public Uri BaseUri { get; }
    public string? ApiKey { get; }
    public HttpClient Http { get; }
    public LoomEngine Engine => _engine;
    public string ModelId => _engine.ModelId;

    public OpenAIClient OpenAI(string? key = null) =>
        new(new ApiKeyCredential(key ?? ApiKey ?? "unused"), new OpenAIClientOptions { Endpoint = new Uri(BaseUri, "v1"), NetworkTimeout = TimeSpan.FromSeconds(120) });

    public async Task<(int Status, JsonDocument Body)> PostAsync(string path, string json, CancellationToken cancel = default)
    {
        using var response = await Http.PostAsync(path, new StringContent(json, Encoding.UTF8, "application/json"), cancel);
        string text = await response.Content.ReadAsStringAsync(cancel);
        return ((int)response.StatusCode, JsonDocument.Parse(text));
    }

    /// <summary>Streams a request and returns the JSON of each event and whether the stream ended with [DONE].</summary>
    public async Task<(List<JsonDocument> Events, bool Done)> StreamAsync(string path, string json, CancellationToken cancel = default)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(json, Encoding.UTF8, "application/json") };
        using var response = await Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancel);
        Assert.Equal(200, (int)response.StatusCode);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(cancel));
        var events = new List<JsonDocument>();
        while (await reader.ReadLineAsync(cancel) is { } line)
        {
            if (line.Length == 0) continue;
            Assert.StartsWith("data: ", line);
            string data = line["data: ".Length..];
            if (data == "[DONE]") return (events, await reader.ReadLineAsync(cancel) is "" && await reader.ReadLineAsync(cancel) is null);
            events.Add(JsonDocument.Parse(data));
        }
        return (events, false);
    }

    /// <summary>Polls /metrics until <paramref name="name"/> has <paramref name="value"/> (bounded wait).</summary>
    public async Task<bool> WaitForMetricAsync(string name, double value, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (DateTime.UtcNow < deadline)
        {
            if (Metric(await Http.GetStringAsync("/metrics"), name) == value) return true;
            await Task.Delay(20);
        }
        return false;
    }

    public static double? Metric(string metrics, string name)
    {
        foreach (var line in metrics.Split('\n'))
            if (line.StartsWith(name + " ", StringComparison.Ordinal))
                return double.Parse(line[(name.Length + 1)..], System.Globalization.CultureInfo.InvariantCulture);
        return null;
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await _app.StopAsync();
        await _app.DisposeAsync();
        _engine.Dispose();
    }
}

/// <summary>What Loom's single-sequence <see cref="Generator"/> produces: the reference for the server's output.</summary>
public static class Reference
{
    private static readonly Lazy<TransformerModel> Stories = new(() => TransformerModel.Load(RunningServer.StoriesPath));

    public static GenerationResult Generate(string prompt, int maxTokens, float temperature, uint seed, IReadOnlyList<string>? stop = null, TransformerModel? model = null, PromptKind kind = PromptKind.Continuation)
    {
        model ??= Stories.Value;
        using var session = new InferenceSession(model, 512);
        var generator = Generator.ForModel(model, session);
        var options = new GenerationOptions
        {
            MaxNewTokens = maxTokens,
            Sampling = new SamplerOptions { Temperature = temperature, Seed = seed },
            StopStrings = stop ?? [],
        };
        return generator.Generate(prompt, kind, options);
    }
}
