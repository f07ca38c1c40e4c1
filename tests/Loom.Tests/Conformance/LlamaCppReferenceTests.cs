using Loom.Core;
using Loom.Models.Gguf;
using Xunit.Abstractions;

namespace Loom.Tests.Conformance;

/// <summary>
/// Checks the reference side on its own: llama.cpp loads the generated files, converts the real vocabularies the way
/// its own tests expect, yields finite non-degenerate logits, and quantizes. If these fail, the Conformance* results
/// mean nothing.
/// </summary>
[Collection(ConformanceCollection.Name)]
public class LlamaCppReferenceTests(ConformanceModels models, ITestOutputHelper output)
{
    public static TheoryData<string> ModelNames() => [.. TestModelFactory.All.Select(s => s.Name)];

    [Fact]
    public void NativeLibraryLoads()
    {
        LlamaCppReference.EnsureNativeLibrary();
        var library = LLama.Native.NativeApi.GetLoadedNativeLibrary(LLama.Native.NativeLibraryName.LLama);
        output.WriteLine($"llama.cpp library: {library?.Metadata}");
        output.WriteLine($"system info: {System.Runtime.InteropServices.Marshal.PtrToStringUTF8(LLama.Native.NativeApi.llama_print_system_info())}");
        Assert.NotNull(library);
        Assert.True(LLama.Native.NativeApi.llama_max_devices() >= 1);
    }

    [Fact]
    public void ReferenceContextHasF32CacheAndNoFlashAttention()
    {
        var reference = models.Reference(models.F32(TestModelFactory.Llama));
        // llama.cpp reports its context settings in the log, which keeps only recent lines: if other tests' loads have
        // pushed them out, creating the context again brings them back.
        for (int attempt = 0; attempt < 3 && LlamaCppReference.LogLinesContaining("flash_attn").Count == 0; attempt++)
            reference.EvaluateAll([1, 2, 3]);
        foreach (var line in LlamaCppReference.LogLinesContaining("flash_attn").Concat(LlamaCppReference.LogLinesContaining("K (")))
            output.WriteLine(line.TrimEnd());
        Assert.Contains(LlamaCppReference.LogLinesContaining("flash_attn"), l => l.Contains("disabled") || l.TrimEnd().EndsWith("= 0"));
        Assert.Contains(LlamaCppReference.LogLinesContaining("K (f32)"), l => l.Contains("V (f32)"));
    }

    [Theory]
    [MemberData(nameof(ModelNames))]
    public void GeneratedModelLoadsAndGivesFiniteSpreadLogits(string name)
    {
        var spec = TestModelFactory.ByName(name);
        var path = models.F32(spec);
        using (var file = GgufFile.Open(path))
        {
            Assert.Equal(spec.Architecture, file.GetString("general.architecture"));
            Assert.Equal(spec.Vocabulary.Count, file.GetArray<string>("tokenizer.ggml.tokens")!.Length);
            Assert.Equal(new long[] { spec.Embedding, spec.Vocabulary.Count }, file.GetTensor("token_embd.weight").Dimensions);
            Assert.All(file.Tensors.Where(t => t.Dimensions.Length == 2), t => Assert.Equal(0, t.RowLength % 256));
        }

        var reference = models.Reference(path);
        Assert.Equal(spec.Vocabulary.Count, reference.VocabSize);
        Assert.Equal(spec.Vocabulary.BosId, reference.BosId);
        Assert.Equal(spec.Vocabulary.EosId, reference.EosId);

        var tokens = ConformanceText.Sequence(reference);
        var logits = reference.EvaluateAll(tokens);
        Assert.All(logits, v => Assert.True(float.IsFinite(v)));
        var (min, max) = Comparison.Range(logits);
        var argmaxes = Enumerable.Range(0, tokens.Length).Select(p => Comparison.ArgMax(logits.AsSpan(p * reference.VocabSize, reference.VocabSize))).ToArray();
        output.WriteLine($"{name}: vocab {reference.VocabSize}, logits in [{min:F2}, {max:F2}], {argmaxes.Distinct().Count()} distinct argmaxes over {tokens.Length} positions");
        // Logits spread over several units and vary by position: a broken or degenerate model would not.
        Assert.InRange(max - min, 4f, 200f);
        Assert.True(argmaxes.Distinct().Count() > tokens.Length / 4, "the argmax barely changes across positions");

        var generated = reference.GenerateGreedy(ConformanceText.Prompt(reference), ConformanceText.GeneratedTokens);
        Assert.Equal(ConformanceText.GeneratedTokens, generated.Length);
        Assert.All(generated, t => Assert.InRange(t, 0, reference.VocabSize - 1));
        // Greedy decoding through the cache must agree with the all-positions batch on its first step.
        Assert.Equal(argmaxes[ConformanceText.PromptLength - 1], generated[0]);
    }

    [Theory]
    [InlineData("llama-spm", "llama-spm")]
    [InlineData("gpt2", "gpt-2")]
    public void ConvertedVocabularyPassesLlamaCppOwnTokenizerCases(string model, string llamaCppVocab)
    {
        var reference = models.Reference(models.F32(TestModelFactory.ByName(model)));
        var cases = ConformanceText.LlamaCppVocabCases(llamaCppVocab);
        var failures = cases.Where(c => !reference.Tokenize(c.Text, addSpecial: false, parseSpecial: false).SequenceEqual(c.Expected))
            .Select(c => $"'{c.Text}': expected [{string.Join(' ', c.Expected)}], got [{string.Join(' ', reference.Tokenize(c.Text, false, false))}]")
            .ToList();
        output.WriteLine($"{model}: {cases.Count - failures.Count}/{cases.Count} of llama.cpp's {llamaCppVocab} cases match");
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    [Fact]
    public void Cl100kVocabularyTokenizesLikeTiktoken()
    {
        // llama-bpe's pre-tokenizer regex is cl100k's, so llama.cpp on the converted vocabulary must reproduce tiktoken.
        var reference = models.Reference(models.F32(TestModelFactory.LlamaBpe));
        var tiktoken = Microsoft.ML.Tokenizers.TiktokenTokenizer.CreateForModel("gpt-4");
        var texts = ConformanceText.SeedLines.Concat(ConformanceText.EdgeCases.Where(t => !t.Contains("<|"))).ToList();
        var failures = texts.Where(t => !reference.Tokenize(t, false, false).SequenceEqual(tiktoken.EncodeToIds(t)))
            .Select(t => $"'{t}': tiktoken [{string.Join(' ', tiktoken.EncodeToIds(t))}], llama.cpp [{string.Join(' ', reference.Tokenize(t, false, false))}]")
            .ToList();
        output.WriteLine($"llama-bpe: {texts.Count - failures.Count}/{texts.Count} texts match tiktoken cl100k_base");
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    [Fact]
    public void SpecialTokensAreControlTokensAndParsedOnlyWhenAsked()
    {
        var reference = models.Reference(models.F32(TestModelFactory.Qwen2));
        var vocab = Vocabularies.Qwen;
        int imStart = vocab.IdOf("<|im_start|>");
        Assert.Equal([imStart], reference.Tokenize("<|im_start|>", addSpecial: false, parseSpecial: true));
        Assert.DoesNotContain(imStart, reference.Tokenize("<|im_start|>", addSpecial: false, parseSpecial: false));

        var llama = models.Reference(models.F32(TestModelFactory.Llama));
        Assert.Equal([1, 15043, 3186], llama.Tokenize("Hello world", addSpecial: true, parseSpecial: false));
    }

    [Fact]
    public void F16ModelFromTheWriterMatchesF32InsideLlamaCpp()
    {
        var spec = TestModelFactory.Qwen3;
        var f16Path = models.F16(spec);
        using (var file = GgufFile.Open(f16Path))
        {
            Assert.Equal(GgmlType.F16, file.GetTensor("blk.0.attn_q.weight").Type);
            Assert.Equal(GgmlType.F32, file.GetTensor("blk.0.attn_q_norm.weight").Type);
        }
        var f32 = models.Reference(models.F32(spec));
        var f16 = models.Reference(f16Path);
        var tokens = ConformanceText.Sequence(f32);
        var exact = f32.EvaluateAll(tokens);
        var half = f16.EvaluateAll(tokens);
        double kl = Comparison.MeanKlDivergence(exact, half, f32.VocabSize);
        output.WriteLine($"qwen3 F16 (Loom's writer) vs F32 inside llama.cpp: mean KL {kl:E2}, argmax agreement {Comparison.ArgMaxAgreement(exact, half, f32.VocabSize):P1}");
        // F16 keeps 11 significant bits: far closer to F32 than any 8-bit type, yet not identical.
        Assert.InRange(kl, 1e-12, 1e-3);
    }

    [Theory]
    [InlineData("llama-spm", "Q8_0", GgmlType.Q8_0)]
    [InlineData("qwen3", "Q4_0", GgmlType.Q4_0)]
    [InlineData("gpt2", "Q4_K_M", GgmlType.Q4_K)]
    [InlineData("llama-bpe", "Q6_K", GgmlType.Q6_K)]
    public void LlamaCppQuantizesGeneratedModels(string name, string quant, GgmlType expectedType)
    {
        var spec = TestModelFactory.ByName(name);
        var path = models.Quantized(spec, quant);
        using (var file = GgufFile.Open(path))
            Assert.Contains(file.Tensors, t => t.Type == expectedType);

        var f32 = models.Reference(models.F32(spec));
        var quantized = models.Reference(path);
        var tokens = ConformanceText.Sequence(f32);
        var exact = f32.EvaluateAll(tokens);
        var approx = quantized.EvaluateAll(tokens);
        double kl = Comparison.MeanKlDivergence(exact, approx, f32.VocabSize);
        double agreement = Comparison.ArgMaxAgreement(exact, approx, f32.VocabSize);
        output.WriteLine($"{name} {quant} vs F32 inside llama.cpp: mean KL {kl:E2}, argmax agreement {agreement:P1}");
        Assert.All(approx, v => Assert.True(float.IsFinite(v)));
        // Random weights have no structure to preserve, so 4-bit types move many argmaxes; the model must still be
        // recognisably the same (chance agreement over this vocabulary would be ~0).
        Assert.True(agreement > 0.25, $"argmax agreement {agreement:P1}");
        Assert.True(kl < 1.0, $"mean KL {kl}");
        // The conformance criteria must tell a quantized model from its F32 original, or passing them would mean little.
        Assert.True(kl >= ConformanceLogitsTests.QuantizedMaxMeanKl || agreement < ConformanceLogitsTests.QuantizedMinArgMaxAgreement,
            $"{quant} vs F32 would pass the quantized conformance criteria (KL {kl:E2}, argmax agreement {agreement:P1})");
    }

    [Fact]
    public void ReferenceLogitsDoNotDependOnBatchShape()
    {
        // The quantized comparisons allow no slack for llama.cpp itself: its logits at a position are bit-identical
        // whether the position ends a short prefix or sits inside the full 64-token batch.
        var reference = models.Reference(models.Quantized(TestModelFactory.Llama, "Q6_K"));
        int vocab = reference.VocabSize;
        var tokens = ConformanceText.Sequence(reference);
        var full = reference.EvaluateAll(tokens);
        foreach (int length in new[] { 1, 2, 17, 40, tokens.Length })
        {
            var prefix = reference.EvaluateAll(tokens[..length]);
            Assert.True(prefix.AsSpan((length - 1) * vocab, vocab).SequenceEqual(full.AsSpan((length - 1) * vocab, vocab)),
                $"llama.cpp's logits at position {length - 1} change with the batch length");
        }
    }
}
