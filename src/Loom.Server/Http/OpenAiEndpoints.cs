using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using Loom.Inference.Generation;
using Loom.Server.Engine;
using Microsoft.AspNetCore.Http;

namespace Loom.Server.Http;

/// <summary>The OpenAI-compatible endpoints: request parsing, scheduling, and JSON or server-sent-event replies.</summary>
internal sealed class OpenAiEndpoints(LoomEngine engine)
{
    private static readonly byte[] Done = "data: [DONE]\n\n"u8.ToArray();

    public Task Models(HttpContext context)
    {
        var body = new JsonObject
        {
            ["object"] = "list",
            ["data"] = new JsonArray(new JsonObject
            {
                ["id"] = engine.ModelId,
                ["object"] = "model",
                ["created"] = engine.Created.ToUnixTimeSeconds(),
                ["owned_by"] = "loom",
                ["meta"] = new JsonObject { ["n_ctx"] = engine.ContextSize, ["n_vocab"] = engine.Codec.Tokenizer.VocabSize },
            }),
        };
        return WriteJson(context, 200, body);
    }

    public Task ChatCompletions(HttpContext context) => Generate(context, chat: true);

    public Task Completions(HttpContext context) => Generate(context, chat: false);

    private async Task Generate(HttpContext context, bool chat)
    {
        var (body, document) = await JsonBody.ReadAsync(context.Request.Body, context.RequestAborted);
        using var _ = document;
        var request = OpenAiRequest.Parse(body, engine, chat);
        int[] prompt;
        try
        {
            prompt = chat ? engine.TokenizeChat(OpenAiRequest.Messages(body)) : OpenAiRequest.CompletionPrompt(body, engine);
        }
        catch (ArgumentException e)
        {
            throw ApiException.BadRequest(e.Message, chat ? "messages" : "prompt");
        }
        if (prompt.Length == 0) throw ApiException.BadRequest("the prompt has no tokens and the vocabulary has no BOS token to start from", chat ? "messages" : "prompt");
        if (prompt.Length >= engine.ContextSize) throw OpenAiRequest.PromptTooLong(prompt.Length, engine.ContextSize, chat ? "messages" : "prompt");

        // The request's sequences end with it: when the client goes, and when one choice fails and the reply is cut short.
        using var ending = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted);
        var sequences = request.Sequences(prompt, ending.Token);
        if (!engine.TrySubmit(sequences))
            throw new ApiException(429, "The server is at capacity: too many requests are waiting. Retry later.", null, "rate_limit_exceeded", "rate_limit_error");

        var reply = new Reply(chat ? "chatcmpl-" : "cmpl-", engine, chat, prompt.Length, request.TopLogprobs is not null);
        try
        {
            if (request.Stream) await Stream(context, reply, sequences, request.IncludeUsage);
            else await Whole(context, reply, sequences);
        }
        finally
        {
            await ending.CancelAsync();
        }
    }

    private static async Task Whole(HttpContext context, Reply reply, IReadOnlyList<SequenceRequest> sequences)
    {
        var results = new SequenceResult[sequences.Count];
        try
        {
            for (int i = 0; i < sequences.Count; i++) results[i] = await sequences[i].ReadAllAsync(context.RequestAborted);
        }
        catch (SequenceFailedException e)
        {
            throw new ApiException(500, e.Message, null, "generation_failed", "server_error");
        }
        await WriteJson(context, 200, reply.Whole(results));
    }

    private static async Task Stream(HttpContext context, Reply reply, IReadOnlyList<SequenceRequest> sequences, bool includeUsage)
    {
        var response = context.Response;
        response.StatusCode = 200;
        response.ContentType = "text/event-stream; charset=utf-8";
        response.Headers.CacheControl = "no-cache";
        response.Headers["X-Accel-Buffering"] = "no";
        var cancel = context.RequestAborted;

        if (reply.Chat)
            for (int i = 0; i < sequences.Count; i++) await WriteEvent(response, reply.RoleChunk(i), cancel);

        int completionTokens = 0;
        await foreach (var (index, output) in Merge(sequences, cancel))
        {
            if (output.Error is not null)
            {
                await WriteEvent(response, JsonNode.Parse(ApiException.ErrorJson(output.Error.Message, "server_error", null, "generation_failed"))!, cancel);
                return;
            }
            if (output.Finish is { } finish)
            {
                completionTokens += output.CompletionTokens;
                await WriteEvent(response, reply.FinishChunk(index, finish), cancel);
            }
            else if (output.Text.Length > 0 || output.Logprob is not null)
            {
                await WriteEvent(response, reply.TextChunk(index, output), cancel);
            }
        }
        if (includeUsage) await WriteEvent(response, reply.UsageChunk(completionTokens), cancel);
        await response.Body.WriteAsync(Done, cancel);
        await response.Body.FlushAsync(cancel);
    }

    /// <summary>The outputs of several sequences in the order they arrive, tagged with the choice index.</summary>
    private static async IAsyncEnumerable<(int Index, SequenceOutput Output)> Merge(IReadOnlyList<SequenceRequest> sequences,
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancel)
    {
        if (sequences.Count == 1)
        {
            await foreach (var output in sequences[0].Output.ReadAllAsync(cancel)) yield return (0, output);
            yield break;
        }
        var merged = Channel.CreateUnbounded<(int, SequenceOutput)>();
        var pumps = sequences.Select(async (s, i) =>
        {
            await foreach (var output in s.Output.ReadAllAsync(cancel)) await merged.Writer.WriteAsync((i, output), cancel);
        }).ToArray();
        _ = Task.WhenAll(pumps).ContinueWith(t => merged.Writer.TryComplete(t.Exception?.InnerException), TaskScheduler.Default);
        await foreach (var item in merged.Reader.ReadAllAsync(cancel)) yield return item;
    }

    private static async Task WriteEvent(HttpResponse response, JsonNode node, CancellationToken cancel)
    {
        var bytes = Encoding.UTF8.GetBytes("data: " + node.ToJsonString(JsonOptions) + "\n\n");
        await response.Body.WriteAsync(bytes, cancel);
        await response.Body.FlushAsync(cancel);
    }

    internal static readonly JsonSerializerOptions JsonOptions = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public static async Task WriteJson(HttpContext context, int status, JsonNode body)
    {
        context.Response.StatusCode = status;
        context.Response.ContentType = "application/json; charset=utf-8";
        await context.Response.WriteAsync(body.ToJsonString(JsonOptions), context.RequestAborted);
    }

    /// <summary>Builds the response objects of one request (shared id and timestamp).</summary>
    private sealed class Reply(string idPrefix, LoomEngine engine, bool chat, int promptTokens, bool wantsLogprobs)
    {
        private readonly string _id = idPrefix + Guid.NewGuid().ToString("N");
        private readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();

        public bool Chat => chat;

        private JsonObject Envelope(string objectType, JsonArray choices) => new()
        {
            ["id"] = _id,
            ["object"] = objectType,
            ["created"] = _created,
            ["model"] = engine.ModelId,
            ["system_fingerprint"] = "loom",
            ["choices"] = choices,
        };

        private string ChunkType => chat ? "chat.completion.chunk" : "text_completion";

        public JsonObject Whole(SequenceResult[] results)
        {
            var choices = new JsonArray();
            for (int i = 0; i < results.Length; i++)
            {
                var r = results[i];
                var choice = new JsonObject { ["index"] = i };
                if (chat) choice["message"] = new JsonObject { ["role"] = "assistant", ["content"] = r.Text, ["refusal"] = null };
                else choice["text"] = r.Text;
                choice["logprobs"] = wantsLogprobs ? Logprobs(r.Logprobs) : null;
                choice["finish_reason"] = FinishText(r.Finish);
                choices.Add(choice);
            }
            var body = Envelope(chat ? "chat.completion" : "text_completion", choices);
            body["usage"] = Usage(results.Sum(r => r.CompletionTokens));
            return body;
        }

        public JsonObject RoleChunk(int index) => Envelope(ChunkType, new JsonArray(new JsonObject
        {
            ["index"] = index,
            ["delta"] = new JsonObject { ["role"] = "assistant", ["content"] = "" },
            ["logprobs"] = null,
            ["finish_reason"] = null,
        }));

        public JsonObject TextChunk(int index, SequenceOutput output)
        {
            var choice = new JsonObject { ["index"] = index };
            if (chat) choice["delta"] = new JsonObject { ["content"] = output.Text };
            else choice["text"] = output.Text;
            choice["logprobs"] = output.Logprob is { } lp ? Logprobs([lp]) : null;
            choice["finish_reason"] = null;
            return Envelope(ChunkType, new JsonArray(choice));
        }

        public JsonObject FinishChunk(int index, FinishReason finish)
        {
            var choice = new JsonObject { ["index"] = index };
            if (chat) choice["delta"] = new JsonObject();
            else choice["text"] = "";
            choice["logprobs"] = null;
            choice["finish_reason"] = FinishText(finish);
            return Envelope(ChunkType, new JsonArray(choice));
        }

        public JsonObject UsageChunk(int completionTokens)
        {
            var body = Envelope(ChunkType, []);
            body["usage"] = Usage(completionTokens);
            return body;
        }

        private JsonObject Usage(int completionTokens) => new()
        {
            ["prompt_tokens"] = promptTokens,
            ["completion_tokens"] = completionTokens,
            ["total_tokens"] = promptTokens + completionTokens,
        };

        private static string FinishText(FinishReason reason) => reason == FinishReason.Length ? "length" : "stop";

        private JsonNode Logprobs(IReadOnlyList<TokenLogprob> tokens)
        {
            if (chat)
            {
                var content = new JsonArray();
                foreach (var t in tokens)
                {
                    var top = new JsonArray();
                    foreach (var (token, logprob) in t.Top) top.Add(Entry(token, logprob));
                    var entry = Entry(t.Token, t.Logprob);
                    entry["top_logprobs"] = top;
                    content.Add(entry);
                }
                return new JsonObject { ["content"] = content, ["refusal"] = null };
            }
            // The legacy completions shape: parallel arrays.
            var texts = new JsonArray();
            var logprobs = new JsonArray();
            var tops = new JsonArray();
            var offsets = new JsonArray();
            int offset = 0;
            foreach (var t in tokens)
            {
                string text = engine.TokenText(t.Token);
                texts.Add(text);
                logprobs.Add(t.Logprob);
                var top = new JsonObject();
                foreach (var (token, logprob) in t.Top) top[engine.TokenText(token)] = logprob;
                tops.Add(top);
                offsets.Add(offset);
                offset += text.Length;
            }
            return new JsonObject { ["tokens"] = texts, ["token_logprobs"] = logprobs, ["top_logprobs"] = tops, ["text_offset"] = offsets };
        }

        private JsonObject Entry(int token, float logprob)
        {
            var bytes = new JsonArray();
            foreach (byte b in engine.TokenBytes(token)) bytes.Add((int)b);
            return new JsonObject { ["token"] = engine.TokenText(token), ["logprob"] = logprob, ["bytes"] = bytes };
        }
    }
}
