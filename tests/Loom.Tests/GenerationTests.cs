using System.Text;
using Loom.Inference.Chat;
using Loom.Inference.Generation;
using Loom.Inference.Sampling;
using Loom.Models.Tokenizers;

namespace Loom.Tests;

public class StopStringTests
{
    private static (string Streamed, StopStringFilter Filter) Feed(string[] stops, params string[] pieces)
    {
        var filter = new StopStringFilter(stops);
        var streamed = new StringBuilder();
        foreach (var p in pieces)
        {
            streamed.Append(filter.Push(p));
            if (filter.Stopped) break;
        }
        streamed.Append(filter.Flush());
        return (streamed.ToString(), filter);
    }

    [Fact]
    public void StopStringSpanningTokens_IsCutAndNeverShown()
    {
        var filter = new StopStringFilter(["lo wo"]);
        Assert.Equal("He", filter.Push("Hel"));  // "l" could start "lo wo": held back
        Assert.Equal("l", filter.Push("lo"));    // "llo": the first "l" cannot, "lo" still can
        Assert.Equal("", filter.Push(" w"));     // "lo w"
        Assert.False(filter.Stopped);
        Assert.Equal("", filter.Push("orld"));
        Assert.True(filter.Stopped);
        Assert.Equal("lo wo", filter.MatchedStop);
        Assert.Equal("", filter.Flush());
    }

    [Fact]
    public void HeldBackText_IsReleasedWhenItCannotBecomeAStop()
    {
        var (streamed, filter) = Feed(["\nUser:"], "Fine", ".\n", "Us", "ually", " yes");
        Assert.False(filter.Stopped);
        Assert.Equal("Fine.\nUsually yes", streamed);
    }

    [Fact]
    public void HeldBackText_IsFlushedAtTheEnd()
    {
        var filter = new StopStringFilter(["###"]);
        Assert.Equal("a", filter.Push("a##"));
        Assert.Equal("##", filter.Flush());
    }

    [Fact]
    public void EarliestStopWins_AndTextBeforeItIsKept()
    {
        var (streamed, filter) = Feed(["END", "STOP"], "one STOP two END");
        Assert.Equal("one ", streamed);
        Assert.Equal("STOP", filter.MatchedStop);
    }

    [Fact]
    public void NoStops_PassesEverythingThrough()
    {
        var filter = new StopStringFilter(null);
        Assert.Equal("abc", filter.Push("abc"));
        Assert.Equal("", filter.Flush());
    }

    [Fact]
    public void Utf8CharacterSplitAcrossTokens_IsEmittedWhole()
    {
        var decoder = new Utf8StreamDecoder();
        Assert.Equal("", decoder.Push([0xC3]));
        Assert.Equal("é", decoder.Push([0xA9]));
        Assert.Equal("", decoder.Push([0xF0, 0x9F]));
        Assert.Equal("", decoder.Push([0x98]));
        Assert.Equal("😀!", decoder.Push([0x80, (byte)'!']));
        Assert.Equal("", decoder.Push([0xE2]));
        Assert.Equal("\uFFFD", decoder.Flush());
    }
}

public class GenerationTests
{
    private static readonly string[] Words = ["Hel", "lo", " w", "orld", "!", "<0xC3>", "<0xA9>", "<|im_start|>", "<|im_end|>",
        "user", "assistant", "system", "\n", "Hi", " there", "?", "Why", " sky", " blue"];

    private static readonly GenerationOptions Greedy = new() { Sampling = SamplerOptions.Greedy, MaxNewTokens = 16 };

    private static (Generator Generator, ScriptedEvaluator Evaluator, FakeTokenizer Tokenizer) Make(
        string? template, int contextSize, Func<FakeTokenizer, int[]> script, bool addBos = true)
    {
        var tokenizer = new FakeTokenizer(Words, addBos, endOfTurn: Array.IndexOf(Words, "<|im_end|>") + 3);
        var evaluator = ScriptedEvaluator.Script(tokenizer.VocabSize, contextSize, script(tokenizer));
        return (new Generator(evaluator, tokenizer, ChatTemplate.Detect(template)), evaluator, tokenizer);
    }

    [Fact]
    public void Greedy_StreamsScriptedTokens_UntilTheLimit()
    {
        var (gen, eval, tok) = Make(null, 64, t => [t.Id(" w"), t.Id("orld"), t.Id("!"), t.Id("!")]);
        var streamed = new StringBuilder();
        var r = gen.Generate("Hello", PromptKind.Continuation, Greedy with { MaxNewTokens = 3 }, s => streamed.Append(s));
        Assert.Equal(" world!", r.Output);
        Assert.Equal(r.Output, streamed.ToString());
        Assert.Equal(FinishReason.Length, r.FinishReason);
        Assert.Equal(3, r.GeneratedTokens);
        Assert.Equal(3, r.PromptTokens); // <s> Hel lo
        Assert.Equal([tok.BosId, tok.Id("Hel"), tok.Id("lo")], eval.Calls[0]);
        // Prefill is one call; the last sampled token is never evaluated.
        Assert.Equal(3, eval.Calls.Count);
        Assert.True(r.PrefillMs >= 0 && r.DecodeMs >= 0);
    }

    [Fact]
    public void EndOfGenerationToken_StopsAndIsNotShown()
    {
        var (gen, _, tok) = Make(null, 64, t => [t.Id("!"), t.EosId, t.Id("Hi")]);
        var r = gen.Generate("Hello", PromptKind.Continuation, Greedy);
        Assert.Equal("!", r.Output);
        Assert.Equal(FinishReason.EndOfGeneration, r.FinishReason);
        Assert.Equal([tok.Id("!")], r.Tokens);
    }

    [Fact]
    public void StopString_AcrossTokens_EndsGenerationWithoutShowingIt()
    {
        var (gen, _, _) = Make(null, 64, t => [t.Id("Hi"), t.Id(" there"), t.Id("!"), t.Id(" w"), t.Id("orld"), t.Id("Hi")]);
        var pieces = new List<string>();
        var r = gen.Generate("Hello", PromptKind.Continuation, Greedy with { StopStrings = ["e! wo"] }, pieces.Add);
        Assert.Equal(FinishReason.Stop, r.FinishReason);
        Assert.Equal("Hi ther", r.Output);
        Assert.Equal("Hi ther", string.Concat(pieces));
        Assert.DoesNotContain(pieces, p => p.Contains('!'));
        Assert.Equal(5, r.GeneratedTokens);
    }

    [Fact]
    public void MultiByteCharacterSplitOverTokens_IsDecodedWhole()
    {
        var (gen, _, _) = Make(null, 64, t => [t.Id("<0xC3>"), t.Id("<0xA9>"), t.EosId]);
        var pieces = new List<string>();
        var r = gen.Generate("Hello", PromptKind.Continuation, Greedy, pieces.Add);
        Assert.Equal("é", r.Output);
        Assert.Equal(["é"], pieces);
    }

    [Fact]
    public void EmptyPrompt_IsBosAlone_EvenWhenTheVocabularyDoesNotAddBos()
    {
        var (gen, eval, tok) = Make(null, 64, t => [t.EosId], addBos: false);
        Assert.Equal([tok.BosId], gen.TokenizePrompt("", PromptKind.Continuation));
        gen.Generate("", PromptKind.Continuation, Greedy);
        Assert.Equal([tok.BosId], eval.Calls[0]);
        Assert.Equal([tok.Id("Hel")], gen.TokenizePrompt("Hel", PromptKind.Continuation));
    }

    [Fact]
    public void PromptLongerThanTheContext_FailsForThatPromptOnly()
    {
        var (gen, _, _) = Make(null, 4, t => [t.Id("!"), t.EosId, t.Id("!"), t.EosId]);
        var e = Assert.Throws<PromptTooLongException>(() => gen.Generate("HelloHelloHello", PromptKind.Continuation, Greedy));
        Assert.Contains("context holds 4", e.Message);
        var r = gen.Generate("Hel", PromptKind.Continuation, Greedy);
        Assert.Equal("!", r.Output);
    }

    [Fact]
    public void FullContext_EndsWithLength()
    {
        var (gen, eval, _) = Make(null, 5, t => [t.Id("!")]);
        var r = gen.Generate("Hello", PromptKind.Continuation, Greedy with { MaxNewTokens = 100 });
        Assert.Equal(FinishReason.Length, r.FinishReason);
        Assert.Equal(5, eval.Position);
        Assert.Equal(3, r.GeneratedTokens); // two evaluated after the 3-token prompt, then one more sampled
    }

    [Fact]
    public void Question_GoesThroughTheChatTemplate_AndBosIsNotDuplicated()
    {
        const string chatMl = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
        var (gen, eval, tok) = Make(chatMl, 64, t => [t.Id("Hi"), t.Id("<|im_end|>")]);
        var r = gen.Generate("Why sky blue?", PromptKind.Question, Greedy);
        Assert.Equal("Hi", r.Output);
        Assert.Equal(FinishReason.EndOfGeneration, r.FinishReason);
        int[] expected = [tok.BosId, tok.Id("<|im_start|>"), tok.Id("user"), tok.Id("\n"), tok.Id("Why"), tok.Id(" sky"), tok.Id(" blue"),
            tok.Id("?"), tok.Id("<|im_end|>"), tok.Id("\n"), tok.Id("<|im_start|>"), tok.Id("assistant"), tok.Id("\n")];
        Assert.Equal(expected, eval.Calls[0]);
        // A sentence opening is continued as plain text even when the model has a template.
        Assert.Equal([tok.BosId, tok.Id("Why"), tok.Id(" sky")], gen.TokenizePrompt("Why sky", PromptKind.Continuation));
    }

    [Fact]
    public void TemplateThatWritesBos_DoesNotGetASecondOne()
    {
        var (gen, _, tok) = Make(ChatTemplateTests.Llama2, 64, t => [t.EosId]);
        var ids = gen.TokenizePrompt("Hi", PromptKind.Question);
        Assert.Equal(tok.BosId, ids[0]);
        Assert.NotEqual(tok.BosId, ids[1]);
    }

    [Fact]
    public void ChatConversation_ReusesTheCachedPrefix()
    {
        const string chatMl = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
        var (gen, eval, tok) = Make(chatMl, 256, t => [t.Id("Hi"), t.Id("<|im_end|>"), t.Id(" there"), t.Id("<|im_end|>")]);
        var chat = new ChatConversation(gen);
        var first = chat.Reply("Hello", Greedy);
        Assert.Equal("Hi", first.Output);
        var second = chat.Reply("Why", Greedy);
        Assert.Equal(" there", second.Output);
        Assert.True(second.PrefillTokens < second.PromptTokens);
        // The evaluator holds exactly the second prompt plus the reply token that was evaluated.
        var rendered = gen.TokenizeText(gen.FormatChat([ChatMessage.User("Hello"), ChatMessage.Assistant("Hi"), ChatMessage.User("Why")]));
        Assert.Equal([.. rendered, tok.Id(" there")], eval.Cache);
        Assert.Equal(4, chat.Messages.Count);
    }

    [Fact]
    public void FailedEvaluation_DoesNotLeaveAStalePrefixForTheNextPrompt()
    {
        var (gen, eval, _) = Make(null, 64, t => [t.Id("!"), t.Id("!"), t.EosId]);
        eval.FailingCall = 0;
        var options = Greedy with { ReuseCachedPrefix = true };
        Assert.Throws<IOException>(() => gen.Generate("Hello world", PromptKind.Continuation, options));
        var r = gen.Generate("Hello world", PromptKind.Continuation, options);
        // The whole prompt is evaluated again on a cleared cache.
        Assert.Equal(r.PromptTokens, r.PrefillTokens);
        Assert.Equal(eval.Calls[1], eval.Cache.Take(r.PromptTokens));
        Assert.Equal("!!", r.Output);
    }

    [Fact]
    public void ChatConversation_DropsOldTurnsWhenTheContextIsFull()
    {
        const string chatMl = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
        var (gen, _, _) = Make(chatMl, 40, t => [t.Id("Hi"), t.Id("<|im_end|>")]);
        var chat = new ChatConversation(gen, systemPrompt: "Hi");
        var options = Greedy with { MaxNewTokens = 4 };
        for (int i = 0; i < 6; i++) chat.Reply("Hello world", options);
        Assert.Equal("system", chat.Messages[0].Role);
        Assert.True(chat.Messages.Count < 13);
    }

    [Fact]
    public void ChatWithoutTemplate_IsRefusedClearly()
    {
        var (gen, _, _) = Make(null, 64, t => [t.EosId]);
        Assert.Contains("no chat template", Assert.Throws<InvalidOperationException>(() => new ChatConversation(gen)).Message);
    }

    [Fact]
    public void SeededSampling_IsReproducibleAcrossPrompts()
    {
        var tokenizer = new FakeTokenizer(Words);
        var rng = new Random(5);
        var table = Enumerable.Range(0, 64).Select(_ => Enumerable.Range(0, tokenizer.VocabSize).Select(_ => (float)rng.NextDouble() * 4).ToArray()).ToArray();
        // Logits depend on the cache length only, so both runs see the same distributions.
        var evaluator = new TableEvaluator(table);
        var gen = new Generator(evaluator, tokenizer, null);
        var options = new GenerationOptions { MaxNewTokens = 20, Sampling = new SamplerOptions { Seed = 99, TopK = 0, MinP = 0, TopP = 1 } };
        var a = gen.Generate("Hello", PromptKind.Continuation, options);
        var b = gen.Generate("Hello", PromptKind.Continuation, options);
        var c = gen.Generate("Hello", PromptKind.Continuation, options with { Sampling = options.Sampling with { Seed = 100 } });
        Assert.Equal(a.Tokens, b.Tokens);
        Assert.NotEqual(a.Tokens, c.Tokens);
    }

    private sealed class TableEvaluator(float[][] table) : ITokenEvaluator
    {
        public int ContextSize => table.Length;
        public int VocabSize => table[0].Length;
        public int Position { get; private set; }
        public ReadOnlySpan<float> Evaluate(ReadOnlySpan<int> tokens) { Position += tokens.Length; return table[Position - 1]; }
        public void Truncate(int position) => Position = position;
    }
}
