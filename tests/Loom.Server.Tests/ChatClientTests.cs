using Loom.Inference.Generation;
using Loom.Models.Architectures;
using Loom.Models.Gguf;
using Loom.Server.Engine;
using Microsoft.Extensions.AI;

namespace Loom.Server.Tests;

/// <summary><see cref="LoomChatClient"/> (Microsoft.Extensions.AI) on the engine, and chat templates through the server.</summary>
public sealed class ChatClientTests
{
    private const string ChatMl =
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}" +
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    /// <summary>A copy of stories260K with a ChatML template added (written with Loom's GgufWriter).</summary>
    private static string StoriesWithChatTemplate()
    {
        using var stories = GgufFile.Open(RunningServer.StoriesPath);
        var writer = new GgufWriter(stories.Alignment);
        foreach (var key in stories.MetadataKeys.Where(k => k is not "general.alignment" and not "tokenizer.chat_template"))
            writer.AddMetadata(key, stories.Metadata[key]);
        writer.Add("tokenizer.chat_template", ChatMl);
        foreach (var t in stories.Tensors) writer.AddTensor(t.Name, t.Type, t.Dimensions, stories.Data(t).ToArray());
        string path = Path.Combine(Path.GetTempPath(), $"loom-server-chatml-{Guid.NewGuid():N}.gguf");
        writer.WriteTo(path);
        return path;
    }

    [Fact]
    public async Task GetResponse_Greedy_EqualsTheGenerator_AndReportsUsage()
    {
        using var engine = LoomEngine.Load(RunningServer.StoriesPath, new EngineOptions { Parallel = 2, ContextSize = 256 });
        IChatClient client = new LoomChatClient(engine);
        var expected = Reference.Generate("Once upon a time", 32, 0, 0);
        var response = await client.GetResponseAsync([new ChatMessage(ChatRole.User, "Once upon a time")],
            new ChatOptions { MaxOutputTokens = 32, Temperature = 0 });
        Assert.Equal(expected.Output, response.Text);
        Assert.Equal(ChatFinishReason.Length, response.FinishReason);
        Assert.Equal("stories260K", response.ModelId);
        Assert.Equal(expected.PromptTokens, response.Usage!.InputTokenCount);
        Assert.Equal(32, response.Usage.OutputTokenCount);
        Assert.Equal("stories260K", client.GetService<ChatClientMetadata>()!.DefaultModelId);
        Assert.Same(engine, client.GetService<LoomEngine>());
    }

    [Fact]
    public async Task Streaming_Seeded_EqualsTheGenerator_AndEndsWithUsage()
    {
        using var engine = LoomEngine.Load(RunningServer.StoriesPath, new EngineOptions { Parallel = 2, ContextSize = 256 });
        IChatClient client = new LoomChatClient(engine);
        var expected = Reference.Generate("The dog", 50, 0.8f, 77, ["."]);
        var options = new ChatOptions { MaxOutputTokens = 50, Temperature = 0.8f, Seed = 77, StopSequences = ["."] };
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in client.GetStreamingResponseAsync([new ChatMessage(ChatRole.User, "The dog")], options)) updates.Add(u);
        Assert.Equal(expected.Output, string.Concat(updates.Select(u => u.Text)));
        var last = updates[^1];
        Assert.Equal(expected.FinishReason == FinishReason.Length ? ChatFinishReason.Length : ChatFinishReason.Stop, last.FinishReason);
        var usage = Assert.Single(last.Contents.OfType<UsageContent>());
        Assert.Equal(expected.GeneratedTokens, usage.Details.OutputTokenCount);
        var whole = updates.ToChatResponse();
        Assert.Equal(expected.Output, whole.Text);
    }

    [Fact]
    public async Task LongPrompts_PrefilledInSmallChunksUnderAStepBudget_GiveTheSameTokens()
    {
        using var engine = LoomEngine.Load(RunningServer.StoriesPath, new EngineOptions { Parallel = 3, ContextSize = 256, PrefillChunk = 5, PrefillTokensPerStep = 7 });
        IChatClient client = new LoomChatClient(engine);
        string prompt = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friend Ben.";
        var expected = Reference.Generate(prompt, 30, 0.6f, 5);
        Assert.True(expected.PromptTokens > 20);
        var responses = await Task.WhenAll(Enumerable.Range(0, 3).Select(_ =>
            client.GetResponseAsync([new ChatMessage(ChatRole.User, prompt)], new ChatOptions { MaxOutputTokens = 30, Temperature = 0.6f, Seed = 5 })));
        Assert.All(responses, r => Assert.Equal(expected.Output, r.Text));
    }

    [Fact]
    public async Task CancelledStream_StopsAndFreesItsSlot()
    {
        using var engine = LoomEngine.Load(RunningServer.StoriesPath, new EngineOptions { Parallel = 1, ContextSize = 512 });
        IChatClient client = new LoomChatClient(engine);
        using var cancel = new CancellationTokenSource();
        int seen = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var _ in client.GetStreamingResponseAsync([new ChatMessage(ChatRole.User, "Once upon a time")],
                               new ChatOptions { MaxOutputTokens = 500, Temperature = 0.9f, Seed = 3 }, cancel.Token))
                if (++seen == 3) cancel.Cancel();
        });
        Assert.Equal(3, seen);
        // The only slot is free again: the next request runs.
        var next = await client.GetResponseAsync([new ChatMessage(ChatRole.User, "Lily")], new ChatOptions { MaxOutputTokens = 4, Temperature = 0 })
            .WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(4, next.Usage!.OutputTokenCount);
    }

    [Fact]
    public async Task BadOptions_AreRejectedBeforeQueueing()
    {
        using var engine = LoomEngine.Load(RunningServer.StoriesPath, new EngineOptions { Parallel = 1, ContextSize = 64 });
        IChatClient client = new LoomChatClient(engine);
        await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync([new ChatMessage(ChatRole.User, "hi")], new ChatOptions { ModelId = "other" }));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => client.GetResponseAsync([new ChatMessage(ChatRole.User, "hi")], new ChatOptions { MaxOutputTokens = 0 }));
        await Assert.ThrowsAsync<PromptTooLongException>(() => client.GetResponseAsync([new ChatMessage(ChatRole.User, string.Concat(Enumerable.Repeat("a big dog ", 100)))]));
    }

    [Fact]
    public async Task ChatTemplate_IsAppliedByTheServerAndTheChatClientAlike()
    {
        string path = StoriesWithChatTemplate();
        try
        {
            using var model = TransformerModel.Load(path);
            var expected = Reference.Generate("Tell me a story", 24, 0, 0, model: model, kind: PromptKind.Question);
            // The template wraps the question, so the prompt is longer than the question's own tokens.
            Assert.True(expected.PromptTokens > Reference.Generate("Tell me a story", 1, 0, 0, model: model).PromptTokens + 5);

            await using var server = await RunningServer.StartAsync(new EngineOptions { Parallel = 2, ContextSize = 256 }, modelPath: path);
            var (status, body) = await server.PostAsync("/v1/chat/completions",
                """{"messages":[{"role":"user","content":"Tell me a story"}],"max_tokens":24,"temperature":0}""");
            Assert.Equal(200, status);
            Assert.Equal(expected.Output, body.RootElement.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString());
            Assert.Equal(expected.PromptTokens, body.RootElement.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());

            IChatClient client = new LoomChatClient(server.Engine);
            var response = await client.GetResponseAsync([new ChatMessage(ChatRole.User, "Tell me a story")], new ChatOptions { MaxOutputTokens = 24, Temperature = 0 });
            Assert.Equal(expected.Output, response.Text);
            Assert.Equal(expected.PromptTokens, response.Usage!.InputTokenCount);
        }
        finally
        {
            File.Delete(path);
        }
    }
}
