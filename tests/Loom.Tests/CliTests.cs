using Loom.Cli;

namespace Loom.Tests;

public class CliTests
{
    internal static (int Code, string Out, string Err) Run(string stdin, params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = LoomCli.Run(args, new CliConsole(new StringReader(stdin), output, error));
        return (code, output.ToString(), error.ToString());
    }

    private static string Stories => SharedData.PathTo("models/stories260K/stories260K.gguf");

    internal static void AssertOneLineError(string err, string expected)
    {
        Assert.Contains(expected, err);
        Assert.DoesNotContain("   at ", err); // no stack trace
        Assert.Single(err.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    [Fact]
    public void Generate_WithoutModel_RunsTheBuiltInModel()
    {
        Assert.True(File.Exists(LoomCli.DefaultModelPath), $"the default model should be copied to {LoomCli.DefaultModelPath}");
        var (code, output, err) = Run("", "generate", "--prompt", "What is attention?", "--max-tokens", "8", "--temperature", "0");
        Assert.True(code == 0, err);
        using var line = System.Text.Json.JsonDocument.Parse(output.Trim().Split('\n')[0]);
        Assert.Equal("What is attention?", line.RootElement.GetProperty("prompt").GetString());
        Assert.InRange(line.RootElement.GetProperty("generated_tokens").GetInt32(), 1, 8);
    }

    /// <summary>The greedy continuation of "Once upon a time" by stories260K, 24 tokens, with <paramref name="extra"/> options.</summary>
    private static string GreedyStory(params string[] extra)
    {
        var (code, output, err) = Run("", ["generate", "-m", Stories, "--prompt", "Once upon a time", "--max-tokens", "24", "--temperature", "0", .. extra]);
        Assert.True(code == 0, err);
        using var line = System.Text.Json.JsonDocument.Parse(output.Trim().Split('\n')[0]);
        return line.RootElement.GetProperty("output").GetString()!;
    }

    /// <summary>Weights copied into 2 MiB pages (the default where Linux offers them) or left in the memory map: the same text.</summary>
    [Fact]
    public void Generate_WithAndWithoutHugePages_WritesTheSameText()
    {
        string copied = GreedyStory();
        Assert.False(string.IsNullOrWhiteSpace(copied));
        Assert.Equal(copied, GreedyStory("--no-huge-pages"));
    }

    /// <summary>`loom bench` says where the weights are: in 2 MiB pages where Linux offers them, in the map when told.</summary>
    [Fact]
    public void Bench_ReportsWhereTheWeightsAre()
    {
        string[] quick = ["bench", "-m", Stories, "-p", "8", "-n", "4", "-s", "2", "-r", "1"];
        var (code, output, err) = Run("", quick);
        Assert.True(code == 0, err);
        Assert.Contains(Loom.Core.IO.WeightArena.HugePagesAvailable ? "of matrices in 2 MiB pages" : "all in the file's memory map", output);
        (code, output, err) = Run("", [.. quick, "--no-huge-pages"]);
        Assert.True(code == 0, err);
        Assert.Contains("all in the file's memory map", output);
    }

    /// <summary>
    /// `--cache-type` reaches the caches: the greedy story is the same from either (stories260K's logits lead by far
    /// more than F16 rounding moves them), `bench` reports the type and its size, and other values are refused.
    /// </summary>
    [Fact]
    public void CacheType_ReachesGenerateAndBench_AndRejectsOtherValues()
    {
        Assert.Equal(GreedyStory("--cache-type", "f32"), GreedyStory());

        string[] quick = ["bench", "-m", Stories, "-p", "8", "-n", "4", "-s", "2", "-r", "1"];
        var (benchCode, benchOutput, benchErr) = Run("", quick);
        Assert.True(benchCode == 0, benchErr);
        Assert.Contains("F16 KV cache", benchOutput);
        (benchCode, benchOutput, benchErr) = Run("", [.. quick, "--cache-type", "f32"]);
        Assert.True(benchCode == 0, benchErr);
        Assert.Contains("F32 KV cache", benchOutput);

        var (badCode, _, badErr) = Run("", "generate", "-m", Stories, "--prompt", "x", "--cache-type", "q8_0");
        Assert.NotEqual(0, badCode);
        Assert.Contains("q8_0", badErr);
        Assert.DoesNotContain("   at ", badErr);
    }

    [Fact]
    public void Generate_WithMissingModelFile_FailsClearly()
    {
        var (code, _, err) = Run("", "generate", "-m", "/definitely/not/here.gguf", "--prompt", "Hello");
        Assert.NotEqual(0, code);
        AssertOneLineError(err, "model file '/definitely/not/here.gguf' does not exist");
    }

    [Fact]
    public void Generate_WithoutPrompts_OrWithBoth_FailsClearly()
    {
        var (code, _, err) = Run("", "generate", "-m", Stories);
        Assert.NotEqual(0, code);
        AssertOneLineError(err, "no prompts");
        (code, _, err) = Run("", "generate", "-m", Stories, "--prompt", "x", "--prompts", "y.txt");
        Assert.NotEqual(0, code);
        AssertOneLineError(err, "not both");
        (code, _, err) = Run("", "generate", "-m", Stories, "--prompts", "/no/such/prompts.txt");
        AssertOneLineError(err, "prompts file '/no/such/prompts.txt' does not exist");
    }

    [Fact]
    public void Generate_RejectsBadSamplingSettings()
    {
        var (code, _, err) = Run("", "generate", "-m", Stories, "--prompt", "x", "--repeat-penalty", "0");
        Assert.NotEqual(0, code);
        AssertOneLineError(err, "repeat penalty");
        (code, _, err) = Run("", "generate", "-m", Stories, "--prompt", "x", "--max-tokens", "-3");
        Assert.NotEqual(0, code);
        AssertOneLineError(err, "--max-tokens");
        (code, _, err) = Run("", "generate", "-m", Stories, "--prompt", "x", "--threads", "0");
        Assert.NotEqual(0, code);
        AssertOneLineError(err, "--threads");
    }

    [Fact]
    public void Generate_RejectsParallelOutsideOneTo256()
    {
        foreach (string bad in new[] { "0", "-2", "257" })
        {
            var (code, _, err) = Run("", "generate", "-m", Stories, "--prompt", "x", "--parallel", bad);
            Assert.NotEqual(0, code);
            AssertOneLineError(err, $"--parallel must be between 1 and 256 (got {bad})");
        }
    }

    [Fact]
    public void UnknownOptionsAndCommands_AreUsageErrors()
    {
        Assert.NotEqual(0, Run("", "generate", "--bogus").Code);
        Assert.NotEqual(0, Run("", "frobnicate").Code);
        Assert.NotEqual(0, Run("", "generate", "--temperature", "warm").Code);
    }

    [Fact]
    public void Inspect_ShowsMetadataTensorsAndTotals()
    {
        var (code, output, err) = Run("", "inspect", Stories);
        Assert.True(code == 0, err);
        Assert.Contains("GGUF v3", output);
        Assert.Contains("general.architecture", output);
        Assert.Contains("\"llama\"", output);
        Assert.Matches(@"llama\.context_length\s+= 2048", output);
        Assert.Contains("[String × 512] [\"<unk>\", \"<s>\", \"</s>\"", output); // long arrays are summarized
        Assert.Contains("(504 more)", output);
        Assert.Matches(@"token_embd\.weight\s+F32\s+\[64, 512\]\s+32,768\s+128\.00 KiB", output);
        Assert.Contains("total: 48 tensors, 292,800 parameters", output);
    }

    [Fact]
    public void Inspect_OfANonGgufFile_IsOneClearError()
    {
        string path = Path.GetTempFileName();
        try
        {
            File.WriteAllText(path, "this is not a model, just a text file that is long enough to have a header");
            var (code, _, err) = Run("", "inspect", path);
            Assert.NotEqual(0, code);
            AssertOneLineError(err, "not a GGUF file");
        }
        finally
        {
            File.Delete(path);
        }
        var missing = Run("", "inspect", "/no/such/model.gguf");
        Assert.NotEqual(0, missing.Code);
        AssertOneLineError(missing.Err, "does not exist");
    }

    [Fact]
    public void Tokenize_WithoutModel_OrWithBothInputs_FailsClearly()
    {
        var (code, _, err) = Run("", "tokenize", "--text", "hi");
        Assert.NotEqual(0, code);
        AssertOneLineError(err, "a model is required");
        (code, _, err) = Run("", "tokenize", "-m", Stories, "--text", "hi", "--file", "x.txt");
        Assert.NotEqual(0, code);
        AssertOneLineError(err, "not both");
    }

    [Fact]
    public void Chat_WithMissingModel_FailsClearly()
    {
        var (code, _, err) = Run("Hello\n", "chat", "-m", "/no/model.gguf");
        Assert.NotEqual(0, code);
        AssertOneLineError(err, "does not exist");
    }

    [Fact]
    public void PromptsFile_IsReadOneNonBlankLineEach()
    {
        string path = Path.GetTempFileName();
        try
        {
            File.WriteAllText(path, "What is a cat?\r\n\r\nThe cat sat\n   \n");
            Assert.Equal(["What is a cat?", "The cat sat"], Loom.Cli.Commands.GenerateCommand.ReadPrompts(path, null));
            Assert.Equal(100, Loom.Cli.Commands.GenerateCommand.ReadPrompts(Path.Combine(SharedData.RepoRoot, "data", "prompts", "seed.txt"), null).Length);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void TokenPieces_AreEscapedToStayOnOneLine()
    {
        Assert.Equal("a\\nb\\tc\\\\d\\x01", Loom.Cli.Commands.TokenizeCommand.Escape("a\nb\tc\\d\u0001"));
    }
}

public class CliGenerationTests
{
    private const string ChatMl = ChatTemplateTests.ChatMl;
    private static readonly string[] Words = ["Hel", "lo", " w", "orld", "!", "<|im_start|>", "<|im_end|>", "user", "assistant", "\n", "What", "?"];

    private static Loom.Inference.Generation.Generator Make(int contextSize, Func<FakeTokenizer, int[]> script)
    {
        var tokenizer = new FakeTokenizer(Words, endOfTurn: 3 + Array.IndexOf(Words, "<|im_end|>"));
        var evaluator = ScriptedEvaluator.Script(tokenizer.VocabSize, contextSize, script(tokenizer));
        return new(evaluator, tokenizer, Loom.Inference.Chat.ChatTemplate.Detect(ChatMl));
    }

    [Fact]
    public void RunOne_RecordsKindTemplateAndFinish_AndSerializesSnakeCase()
    {
        var gen = Make(64, t => [t.Id(" w"), t.Id("orld"), t.Id("<|im_end|>")]);
        var options = new Loom.Inference.Generation.GenerationOptions { Sampling = Loom.Inference.Sampling.SamplerOptions.Greedy };
        var record = Loom.Cli.Commands.GenerateCommand.RunOne(gen, 3, "What?", options);
        Assert.Equal("question", record.Kind);
        Assert.True(record.ChatTemplate);
        Assert.Equal(" world", record.Output);
        Assert.Equal("eos", record.FinishReason);
        Assert.Equal(2, record.GeneratedTokens);
        string json = System.Text.Json.JsonSerializer.Serialize(record, Loom.Cli.Commands.GenerateCommand.JsonOptions);
        Assert.Contains("\"index\":3", json);
        Assert.Contains("\"prompt_tokens\":", json);
        Assert.Contains("\"finish_reason\":\"eos\"", json);
        Assert.Contains("\"decode_tokens_per_second\":", json);
        Assert.DoesNotContain("\"error\"", json);
    }

    [Fact]
    public void RunOne_PromptTooLong_IsAnErrorRecord_NotACrash()
    {
        var gen = Make(6, t => [t.Id("!")]);
        var options = new Loom.Inference.Generation.GenerationOptions { Sampling = Loom.Inference.Sampling.SamplerOptions.Greedy };
        var record = Loom.Cli.Commands.GenerateCommand.RunOne(gen, 0, "HelloHelloHelloHello world", options);
        Assert.Equal("error", record.FinishReason);
        Assert.Contains("context holds 6", record.Error);
        Assert.Equal("continuation", record.Kind);
        var next = Loom.Cli.Commands.GenerateCommand.RunOne(gen, 1, "Hello", options with { MaxNewTokens = 2 });
        Assert.Equal("!!", next.Output);
        Assert.Equal("length", next.FinishReason);
    }

    [Fact]
    public void Chat_StreamsReplies_KeepsHistory_AndEndsOnExitOrEof()
    {
        var gen = Make(256, t => [t.Id("Hel"), t.Id("lo"), t.Id("<|im_end|>"), t.Id("!"), t.Id("<|im_end|>")]);
        var conversation = new Loom.Inference.Chat.ChatConversation(gen);
        var output = new StringWriter();
        var error = new StringWriter();
        var options = new Loom.Inference.Generation.GenerationOptions { Sampling = Loom.Inference.Sampling.SamplerOptions.Greedy };
        Loom.Cli.Commands.ChatCommand.Converse(conversation, options, new CliConsole(new StringReader("What?\n\nHello\n/exit\nnever read\n"), output, error));
        Assert.Equal("> Hello\n> > !\n> ", output.ToString().Replace("\r\n", "\n"));
        Assert.Equal(4, conversation.Messages.Count);
        Assert.Equal("Hello", conversation.Messages[1].Content);
        Assert.Contains("eos", error.ToString());

        var eof = new StringWriter();
        Loom.Cli.Commands.ChatCommand.Converse(new Loom.Inference.Chat.ChatConversation(Make(256, t => [t.Id("<|im_end|>")])), options,
            new CliConsole(new StringReader(""), eof, new StringWriter()));
        Assert.Equal("> \n", eof.ToString().Replace("\r\n", "\n"));
    }

    [Fact]
    public void PhiThreeVocabulary_CarriesATemplateLoomRecognises()
    {
        using var gguf = Loom.Models.Gguf.GgufFile.Open(SharedData.PathTo("vocab/llama.cpp/ggml-vocab-phi-3.gguf"));
        var template = Loom.Inference.Chat.ChatTemplate.Detect(gguf.GetString("tokenizer.chat_template"));
        Assert.NotNull(template);
        Assert.Equal(Loom.Inference.Chat.ChatTemplateFamily.Phi3, template.Family);
        Assert.Equal("<s><|user|>\nBe brief\nHi<|end|>\n<|assistant|>\n",
            template.Format([Loom.Inference.Chat.ChatMessage.System("Be brief"), Loom.Inference.Chat.ChatMessage.User("Hi")], true, "<s>", "<|endoftext|>"));
    }
}
