using System.ClientModel;
using System.Text.Json;
using Loom.Inference.Generation;
using Loom.Server.Engine;
using OpenAI.Chat;

namespace Loom.Server.Tests;

public sealed class StoriesServerFixture : IAsyncLifetime
{
    public const string Key = "test-key-123";
    public RunningServer Server { get; private set; } = null!;
    public Task InitializeAsync() => StartAsync();
    private async Task StartAsync() => Server = await RunningServer.StartAsync(new EngineOptions { Parallel = 4, ContextSize = 512 }, Key);
    public async Task DisposeAsync() => await Server.DisposeAsync();
}

/// <summary>The official OpenAI .NET client against a real server on 127.0.0.1.</summary>
public sealed class OpenAiClientTests(StoriesServerFixture fixture) : IClassFixture<StoriesServerFixture>
{
    private RunningServer Server => fixture.Server;
    private ChatClient Chat => Server.OpenAI().GetChatClient(Server.ModelId);

    [Fact]
    public async Task Models_ListsTheServedModel()
    {
        var models = (await Server.OpenAI().GetOpenAIModelClient().GetModelsAsync()).Value;
        var model = Assert.Single(models);
        Assert.Equal("stories260K", model.Id);
        Assert.Equal("loom", model.OwnedBy);
    }

    [Fact]
    public async Task Chat_Greedy_EqualsTheEngineAlone()
    {
        // stories260K has no chat template: the user's text is the plain completion prompt.
        var expected = Reference.Generate("Once upon a time", 40, 0, 0);
        ChatCompletion reply = await Chat.CompleteChatAsync([new UserChatMessage("Once upon a time")],
            new ChatCompletionOptions { MaxOutputTokenCount = 40, Temperature = 0 });
        Assert.Equal(expected.Output, reply.Content.Single().Text);
        Assert.StartsWith(", there was a little girl named Lily.", reply.Content.Single().Text);
        Assert.Equal(ChatFinishReason.Length, reply.FinishReason);
        Assert.Equal(ChatMessageRole.Assistant, reply.Role);
        Assert.Equal(expected.PromptTokens, reply.Usage.InputTokenCount);
        Assert.Equal(40, reply.Usage.OutputTokenCount);
        Assert.Equal(expected.PromptTokens + 40, reply.Usage.TotalTokenCount);
    }

    [Fact]
    public async Task StreamingChat_Seeded_EqualsTheEngineAndReportsUsage()
    {
        var expected = Reference.Generate("The cat", 60, 0.9f, 1234);
        var text = new System.Text.StringBuilder();
        ChatTokenUsage? usage = null;
        ChatFinishReason? finish = null;
        int updates = 0;
        await foreach (var update in Chat.CompleteChatStreamingAsync([new UserChatMessage("The cat")],
                           new ChatCompletionOptions { MaxOutputTokenCount = 60, Temperature = 0.9f, Seed = 1234 }))
        {
            updates++;
            foreach (var part in update.ContentUpdate) text.Append(part.Text);
            usage ??= update.Usage;
            finish ??= update.FinishReason;
        }
        Assert.Equal(expected.Output, text.ToString());
        Assert.True(updates > 10, $"expected one update per token, got {updates}");
        Assert.NotNull(usage);
        Assert.Equal(expected.PromptTokens, usage.InputTokenCount);
        Assert.Equal(expected.GeneratedTokens, usage.OutputTokenCount);
        Assert.Equal(expected.FinishReason == FinishReason.Length ? ChatFinishReason.Length : ChatFinishReason.Stop, finish);
    }

    [Fact]
    public async Task Chat_StopString_CutsTheOutputBeforeIt()
    {
        var expected = Reference.Generate("Once upon a time", 100, 0, 0, ["park"]);
        Assert.Equal(FinishReason.Stop, expected.FinishReason);
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 100, Temperature = 0 };
        options.StopSequences.Add("park");
        ChatCompletion reply = await Chat.CompleteChatAsync([new UserChatMessage("Once upon a time")], options);
        Assert.Equal(expected.Output, reply.Content.Single().Text);
        Assert.DoesNotContain("park", reply.Content.Single().Text);
        Assert.Equal(ChatFinishReason.Stop, reply.FinishReason);
    }

    [Fact]
    public async Task Chat_Logprobs_AreNormalisedAndRankTheGreedyChoiceFirst()
    {
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 12, Temperature = 0, IncludeLogProbabilities = true, TopLogProbabilityCount = 3 };
        ChatCompletion reply = await Chat.CompleteChatAsync([new UserChatMessage("Once upon a time")], options);
        Assert.Equal(12, reply.ContentTokenLogProbabilities.Count);
        Assert.Equal(reply.Content.Single().Text, string.Concat(reply.ContentTokenLogProbabilities.Select(t => t.Token)));
        foreach (var token in reply.ContentTokenLogProbabilities)
        {
            Assert.InRange(token.LogProbability, -100f, 0f);
            Assert.Equal(3, token.TopLogProbabilities.Count);
            // Greedy picks the most likely token: it heads the list, and the list is in descending order.
            Assert.Equal(token.Token, token.TopLogProbabilities[0].Token);
            Assert.Equal(token.LogProbability, token.TopLogProbabilities[0].LogProbability, 5);
            Assert.True(token.TopLogProbabilities[0].LogProbability >= token.TopLogProbabilities[1].LogProbability);
            Assert.True(token.TopLogProbabilities[1].LogProbability >= token.TopLogProbabilities[2].LogProbability);
            Assert.Equal(token.Utf8Bytes!.Value.ToArray(), System.Text.Encoding.UTF8.GetBytes(token.Token));
        }
    }

    [Fact]
    public async Task Completions_Greedy_EqualsTheEngineAlone()
    {
        var expected = Reference.Generate("Lily and Ben", 30, 0, 0);
        // OpenAI 2.x keeps its completions client internal: send the request through the official client's pipeline
        // (its authentication, headers and error handling), as its protocol methods do.
        var pipeline = Server.OpenAI().GetChatClient(Server.ModelId).Pipeline;
        using var message = pipeline.CreateMessage();
        message.Request.Method = "POST";
        message.Request.Uri = new Uri(Server.BaseUri, "v1/completions");
        message.Request.Headers.Set("Content-Type", "application/json");
        message.Request.Content = BinaryContent.Create(BinaryData.FromObjectAsJson(new { model = Server.ModelId, prompt = "Lily and Ben", max_tokens = 30, temperature = 0 }));
        await pipeline.SendAsync(message);
        var result = ClientResult.FromResponse(message.Response!);
        Assert.Equal(200, result.GetRawResponse().Status);
        using var json = JsonDocument.Parse(result.GetRawResponse().Content.ToString());
        var root = json.RootElement;
        Assert.Equal("text_completion", root.GetProperty("object").GetString());
        var choice = root.GetProperty("choices")[0];
        Assert.Equal(expected.Output, choice.GetProperty("text").GetString());
        Assert.Equal("length", choice.GetProperty("finish_reason").GetString());
        Assert.Equal(expected.PromptTokens, root.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        Assert.Equal(30, root.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }

    [Fact]
    public async Task Completions_Streaming_EndsWithDoneAndUsage()
    {
        var expected = Reference.Generate("Tom had a dog", 25, 0.7f, 99);
        var (events, done) = await Server.StreamAsync("/v1/completions",
            """{"prompt":"Tom had a dog","max_tokens":25,"temperature":0.7,"seed":99,"stream":true,"stream_options":{"include_usage":true}}""");
        Assert.True(done);
        var chunks = events.Where(e => e.RootElement.GetProperty("choices").GetArrayLength() > 0).ToList();
        Assert.Equal(expected.Output, string.Concat(chunks.Select(e => e.RootElement.GetProperty("choices")[0].GetProperty("text").GetString())));
        Assert.Equal(expected.FinishReason == FinishReason.Length ? "length" : "stop",
            chunks[^1].RootElement.GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        var usage = events[^1].RootElement.GetProperty("usage");
        Assert.Equal(expected.GeneratedTokens, usage.GetProperty("completion_tokens").GetInt32());
        Assert.Equal(expected.PromptTokens, usage.GetProperty("prompt_tokens").GetInt32());
    }

    [Fact]
    public async Task Completions_SeveralChoices_EachUseTheirOwnSeed()
    {
        var (status, body) = await Server.PostAsync("/v1/completions", """{"prompt":"The sun","max_tokens":20,"temperature":1.0,"seed":7,"n":3}""");
        Assert.Equal(200, status);
        var choices = body.RootElement.GetProperty("choices");
        Assert.Equal(3, choices.GetArrayLength());
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(i, choices[i].GetProperty("index").GetInt32());
            Assert.Equal(Reference.Generate("The sun", 20, 1.0f, 7 + (uint)i).Output, choices[i].GetProperty("text").GetString());
        }
    }

    [Fact]
    public async Task Completions_Logprobs_UseTheLegacyShape()
    {
        var (status, body) = await Server.PostAsync("/v1/completions", """{"prompt":"Once upon a time","max_tokens":5,"temperature":0,"logprobs":2}""");
        Assert.Equal(200, status);
        var choice = body.RootElement.GetProperty("choices")[0];
        var logprobs = choice.GetProperty("logprobs");
        Assert.Equal(5, logprobs.GetProperty("tokens").GetArrayLength());
        Assert.Equal(choice.GetProperty("text").GetString(), string.Concat(logprobs.GetProperty("tokens").EnumerateArray().Select(t => t.GetString())));
        Assert.All(logprobs.GetProperty("token_logprobs").EnumerateArray(), lp => Assert.InRange(lp.GetDouble(), -100, 0));
        Assert.All(logprobs.GetProperty("top_logprobs").EnumerateArray(), top => Assert.Equal(2, top.EnumerateObject().Count()));
    }

    [Fact]
    public async Task WrongApiKey_Is401()
    {
        var chat = Server.OpenAI("wrong-key").GetChatClient(Server.ModelId);
        var e = await Assert.ThrowsAsync<ClientResultException>(() => chat.CompleteChatAsync([new UserChatMessage("hi")]));
        Assert.Equal(401, e.Status);
        using var missing = new HttpClient { BaseAddress = Server.BaseUri };
        using var response = await missing.GetAsync("/v1/models");
        Assert.Equal(401, (int)response.StatusCode);
        using var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        Assert.Equal("invalid_api_key", json.RootElement.GetProperty("error").GetProperty("code").GetString());
        // Health and metrics stay open for probes and scrapers.
        using var health = await missing.GetAsync("/health");
        Assert.Equal(200, (int)health.StatusCode);
        using var metrics = await missing.GetAsync("/metrics");
        Assert.Equal(200, (int)metrics.StatusCode);
        Assert.StartsWith("text/plain", metrics.Content.Headers.ContentType?.MediaType);
    }

    [Fact]
    public async Task UnknownModel_Is404()
    {
        var chat = Server.OpenAI().GetChatClient("gpt-4o");
        var e = await Assert.ThrowsAsync<ClientResultException>(() => chat.CompleteChatAsync([new UserChatMessage("hi")]));
        Assert.Equal(404, e.Status);
        Assert.Contains("gpt-4o", e.Message);
    }

    [Fact]
    public async Task PromptLongerThanTheContext_Is400()
    {
        string longPrompt = string.Concat(Enumerable.Repeat("Once upon a time there was a cat. ", 100));
        var e = await Assert.ThrowsAsync<ClientResultException>(() => Chat.CompleteChatAsync([new UserChatMessage(longPrompt)]));
        Assert.Equal(400, e.Status);
        Assert.Contains("context_length_exceeded", e.Message);
    }

    [Fact]
    public async Task MaxTokensOutOfRange_Is400()
    {
        var e = await Assert.ThrowsAsync<ClientResultException>(() => Chat.CompleteChatAsync([new UserChatMessage("hi")], new ChatCompletionOptions { MaxOutputTokenCount = 100_000 }));
        Assert.Equal(400, e.Status);
        Assert.Contains("max_completion_tokens", e.Message);
    }

    [Theory]
    [InlineData("/v1/chat/completions", "{\"messages\": [", 400, null, null)]
    [InlineData("/v1/chat/completions", "[1, 2]", 400, null, null)]
    [InlineData("/v1/chat/completions", "{\"messages\": \"hi\"}", 400, "messages", "invalid_type")]
    [InlineData("/v1/chat/completions", "{}", 400, "messages", "missing_required_parameter")]
    [InlineData("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", 400, "messages[0].content", "invalid_type")]
    [InlineData("/v1/chat/completions", "{\"messages\": [{\"role\": \"wizard\", \"content\": \"hi\"}]}", 400, "messages[0].role", "invalid_value")]
    [InlineData("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"temperature\": \"hot\"}", 400, "temperature", "invalid_type")]
    [InlineData("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"temperature\": 7}", 400, "temperature", "invalid_value")]
    [InlineData("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 0}", 400, "max_tokens", "invalid_value")]
    [InlineData("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 1.5}", 400, "max_tokens", "invalid_type")]
    [InlineData("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"n\": 1000}", 400, "n", "invalid_value")]
    [InlineData("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"stream\": \"yes\"}", 400, "stream", "invalid_type")]
    [InlineData("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"stop\": [1]}", 400, "stop", "invalid_type")]
    [InlineData("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"seed\": -1}", 400, "seed", "invalid_value")]
    [InlineData("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"top_p\": 1e400}", 400, "top_p", "invalid_type")]
    [InlineData("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"\\ud800\"}]}", 400, "messages[0].content", "invalid_value")]
    [InlineData("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}", 400, "messages[0].content", "invalid_value")]
    [InlineData("/v1/completions", "{\"prompt\": 12}", 400, "prompt", "invalid_type")]
    [InlineData("/v1/completions", "{\"prompt\": [\"a\", \"b\"]}", 400, "prompt", "invalid_value")]
    [InlineData("/v1/completions", "{\"prompt\": \"hi\", \"stop\": \"\\udc00x\"}", 400, "stop", "invalid_value")]
    [InlineData("/v1/completions", "{\"prompt\": [1, 99999]}", 400, "prompt", "invalid_value")]
    [InlineData("/v1/completions", "{\"prompt\": \"hi\", \"max_tokens\": -1}", 400, "max_tokens", "invalid_value")]
    [InlineData("/v1/completions", "{\"prompt\": \"hi\", \"max_tokens\": 100000000000000000000}", 400, "max_tokens", "invalid_type")]
    [InlineData("/v1/nothing", "{}", 404, null, "unknown_url")]
    public async Task BadRequests_GetOpenAiErrorsAndTheServerStaysUp(string path, string json, int status, string? param, string? code)
    {
        var (got, body) = await Server.PostAsync(path, json);
        Assert.Equal(status, got);
        var error = body.RootElement.GetProperty("error");
        Assert.False(string.IsNullOrEmpty(error.GetProperty("message").GetString()));
        Assert.Equal("invalid_request_error", error.GetProperty("type").GetString());
        Assert.Equal(param, error.GetProperty("param").GetString());
        if (code is not null) Assert.Equal(code, error.GetProperty("code").GetString());
        Assert.Equal("ok", JsonDocument.Parse(await Server.Http.GetStringAsync("/health")).RootElement.GetProperty("status").GetString());
    }

    [Fact]
    public async Task Metrics_CountRequestsTokensAndLatencies()
    {
        await Chat.CompleteChatAsync([new UserChatMessage("Once upon a time")], new ChatCompletionOptions { MaxOutputTokenCount = 5, Temperature = 0 });
        string metrics = await Server.Http.GetStringAsync("/metrics");
        Assert.Contains("# TYPE loom_time_to_first_token_seconds histogram", metrics);
        Assert.Contains("# TYPE loom_inter_token_latency_seconds histogram", metrics);
        Assert.Contains("loom_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}", metrics);
        Assert.True(RunningServer.Metric(metrics, "loom_generated_tokens_total") >= 5);
        Assert.True(RunningServer.Metric(metrics, "loom_prompt_tokens_total") >= 5);
        Assert.True(RunningServer.Metric(metrics, "loom_time_to_first_token_seconds_count") >= 1);
        Assert.True(RunningServer.Metric(metrics, "loom_inter_token_latency_seconds_count") >= 4);
        Assert.NotNull(RunningServer.Metric(metrics, "loom_queue_depth"));
        Assert.NotNull(RunningServer.Metric(metrics, "loom_running_sequences"));
        Assert.NotNull(RunningServer.Metric(metrics, "loom_kv_cache_usage_ratio"));
    }
}

/// <summary>Every field of valid requests replaced, one at a time, by values of every JSON type: never a 5xx.</summary>
public sealed class RequestMutationTests(StoriesServerFixture fixture) : IClassFixture<StoriesServerFixture>
{
    private static readonly string[] Values =
        ["null", "true", "\"x\"", "\"\"", "-1", "0", "1", "2.5", "1e300", "[]", "[1]", "[\"a\"]", "{}", "{\"a\": 1}", "\"\\ud800\""];

    private static readonly (string Path, string Body)[] Requests =
    [
        ("/v1/chat/completions", """{"model":"stories260K","messages":[{"role":"user","content":"Lily"}],"max_tokens":3,"temperature":0.5,"top_p":0.9,"seed":1,"n":1,"stop":["x"],"stream":false,"stream_options":{"include_usage":true},"logprobs":true,"top_logprobs":2,"frequency_penalty":0.1,"presence_penalty":0.1,"max_completion_tokens":3,"top_k":5,"min_p":0.1}"""),
        ("/v1/completions", """{"model":"stories260K","prompt":"Lily","max_tokens":3,"temperature":0.5,"top_p":0.9,"seed":1,"n":1,"stop":"x","stream":true,"logprobs":1,"frequency_penalty":0.1,"presence_penalty":0.1,"repeat_penalty":1.1,"repeat_last_n":8}"""),
    ];

    [Fact]
    public async Task MutatedFields_GiveSuccessOrA4xx_NeverAServerError()
    {
        var server = fixture.Server;
        int requests = 0, rejected = 0;
        foreach (var (path, body) in Requests)
        {
            var original = System.Text.Json.Nodes.JsonNode.Parse(body)!.AsObject();
            foreach (var field in original.Select(p => p.Key).ToArray())
            {
                foreach (var value in Values)
                {
                    string json = original.ToJsonString().Replace($"\"{field}\":{original[field]!.ToJsonString()}", $"\"{field}\":{value}");
                    Assert.Contains($"\"{field}\":{value}", json);
                    using var response = await server.Http.PostAsync(path, new StringContent(json, System.Text.Encoding.UTF8, "application/json"));
                    int status = (int)response.StatusCode;
                    string text = await response.Content.ReadAsStringAsync();
                    requests++;
                    Assert.True(status is 200 or 400 or 404, $"{path} with {field}={value}: {status} {text}");
                    if (status != 200)
                    {
                        rejected++;
                        Assert.Contains("\"error\"", text);
                    }
                }
            }
        }
        Assert.True(rejected > requests / 3, $"only {rejected} of {requests} mutations were rejected");
        Assert.True(await server.WaitForMetricAsync("loom_running_sequences", 0, TimeSpan.FromSeconds(10)));
    }
}
