using System.Text;
using LLama.Native;
using Loom.Models.Gguf;
using Loom.Models.Tokenizers;

namespace Loom.Tests;

/// <summary>
/// Differential tests against llama.cpp itself (LLamaSharp 0.30.0's native build, loaded vocabulary-only): special ids,
/// flags, end-of-generation marks, every token's piece, and the tokenization of many strings must all agree.
/// </summary>
public class TokenizerLlamaCppTests
{
    public static TheoryData<string> Vocabularies() => new(
        "vocab/llama.cpp/ggml-vocab-llama-spm.gguf", "vocab/llama.cpp/ggml-vocab-phi-3.gguf", "vocab/llama.cpp/ggml-vocab-baichuan.gguf",
        "vocab/llama.cpp/ggml-vocab-gpt-2.gguf", "vocab/llama.cpp/ggml-vocab-gpt-neox.gguf", "vocab/llama.cpp/ggml-vocab-mpt.gguf",
        "vocab/llama.cpp/ggml-vocab-refact.gguf", "vocab/llama.cpp/ggml-vocab-deepseek-coder.gguf", "models/stories260K/stories260K.gguf");

    [Theory]
    [MemberData(nameof(Vocabularies))]
    public void SpecialTokensAndPiecesMatch(string relative) => CompareVocabulary(SharedData.PathTo(relative));

    /// <summary>Vocabulary size, special ids, add-BOS/EOS flags, and every token's attributes and pieces.</summary>
    internal static void CompareVocabulary(string path)
    {
        using var file = GgufFile.Open(path);
        var ours = Tokenizer.FromGguf(file);
        using var native = LlamaCppReference.LoadVocabulary(path);
        var vocab = native.NativeHandle.Vocab;

        Assert.Equal(vocab.Count, ours.VocabSize);
        Assert.Equal(Id(vocab.BOS), ours.BosId);
        Assert.Equal(Id(vocab.EOS), ours.EosId);
        Assert.Equal(Id(vocab.EOT), ours.EotId);
        Assert.Equal(Id(vocab.Pad), ours.PaddingId);
        Assert.Equal(vocab.ShouldAddBOS, ours.AddBos);
        Assert.Equal(vocab.ShouldAddEOS, ours.AddEos);

        var buffer = new byte[4096];
        var mismatches = new List<string>();
        for (int id = 0; id < ours.VocabSize && mismatches.Count < 10; id++)
        {
            var token = (LLamaToken)id;
            if (token.IsEndOfGeneration(vocab) != ours.IsEndOfGeneration(id)) mismatches.Add($"{id} '{ours.Piece(id)}': end-of-generation differs");
            if ((int)token.GetAttributes(vocab) != (int)ours.Attributes(id)) mismatches.Add($"{id} '{ours.Piece(id)}': attributes {token.GetAttributes(vocab)} vs {ours.Attributes(id)}");
            foreach (bool special in (bool[])[false, true])
            {
                int n = NativeApi.llama_token_to_piece(vocab, token, buffer, 0, special);
                if (!buffer.AsSpan(0, n).SequenceEqual(ours.TokenBytes(id, special))) mismatches.Add($"{id} '{ours.Piece(id)}' (special {special}): piece differs");
            }
        }
        Assert.True(mismatches.Count == 0, string.Join('\n', mismatches));
    }

    [Theory]
    [MemberData(nameof(Vocabularies))]
    public void EncodingMatchesOnManyStrings(string relative) => CompareEncoding(SharedData.PathTo(relative), randomStrings: 400);

    /// <summary>Every pre-tokenizer Loom implements, run by both sides on GPT-2's vocabulary and merges under that pre-tokenizer's name.</summary>
    [Theory]
    [InlineData("default")] [InlineData("llama-bpe")] [InlineData("dbrx")] [InlineData("chatglm-bpe")] [InlineData("deepseek-llm")]
    [InlineData("deepseek-coder")] [InlineData("deepseek-v3")] [InlineData("falcon")] [InlineData("starcoder")] [InlineData("command-r")]
    [InlineData("gpt-2")] [InlineData("qwen2")] [InlineData("stablelm2")] [InlineData("poro-chat")] [InlineData("bloom")] [InlineData("viking")]
    [InlineData("bailingmoe")] [InlineData("seed-coder")] [InlineData("smollm")] [InlineData("megrez")] [InlineData("olmo")]
    public void EveryPreTokenizerMatches(string pre)
    {
        string path = ModelGgufWriter.EditedCopy(SharedData.PathTo("vocab/llama.cpp/ggml-vocab-gpt-2.gguf"), w => w.Set("tokenizer.ggml.pre", pre));
        try { CompareEncoding(path, randomStrings: 150); }
        finally { File.Delete(path); }
    }

    [Fact]
    public void SentencePieceWithoutSpacePrefixMatches()
    {
        string path = ModelGgufWriter.EditedCopy(SharedData.PathTo("vocab/llama.cpp/ggml-vocab-llama-spm.gguf"), w => w
            .Set("tokenizer.ggml.add_space_prefix", GgufValue.Of(false))
            .Set("tokenizer.ggml.add_bos_token", GgufValue.Of(false))
            .Set("tokenizer.ggml.add_eos_token", GgufValue.Of(true)));
        try { CompareEncoding(path, randomStrings: 150); }
        finally { File.Delete(path); }
    }

    internal static void CompareEncoding(string path, int randomStrings)
    {
        using var file = GgufFile.Open(path);
        var ours = Tokenizer.FromGguf(file);
        using var native = LlamaCppReference.LoadVocabulary(path);
        Assert.Equal(native.NativeHandle.Vocab.ShouldAddBOS, ours.AddBos);
        Assert.Equal(native.NativeHandle.Vocab.ShouldAddEOS, ours.AddEos);

        var mismatches = new List<string>();
        int compared = 0;
        foreach (string text in Corpus(ours, randomStrings))
        {
            foreach (var (addSpecial, parseSpecial) in ((bool, bool)[])[(false, false), (true, true), (false, true)])
            {
                var expected = native.NativeHandle.Tokenize(text, addSpecial, parseSpecial, Encoding.UTF8).Select(t => (int)t).ToArray();
                var actual = ours.Encode(text, addSpecial, parseSpecial);
                compared++;
                if (!actual.SequenceEqual(expected) && mismatches.Count < 10)
                    mismatches.Add($"'{TokenizerSuiteTests.Escape(text)}' (add {addSpecial}, parse {parseSpecial}): llama.cpp [{string.Join(' ', expected)}] Loom [{string.Join(' ', actual)}]");
            }
        }
        Assert.True(mismatches.Count == 0, $"{mismatches.Count}+ of {compared} differ\n" + string.Join('\n', mismatches));
    }

    [Theory]
    [MemberData(nameof(Vocabularies))]
    public unsafe void DecodingMatchesLlamaDetokenize(string relative)
    {
        string path = SharedData.PathTo(relative);
        using var file = GgufFile.Open(path);
        var ours = Tokenizer.FromGguf(file);
        using var native = LlamaCppReference.LoadVocabulary(path);
        // llama_detokenize and the vocabulary pointer are internal to LLamaSharp, so they are reached by reflection
        const System.Reflection.BindingFlags hidden = System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.Static;
        object vocab = typeof(SafeLlamaModelHandle.Vocabulary).GetProperty("VocabNative", hidden)!.GetValue(native.NativeHandle.Vocab)!;
        var detokenize = typeof(NativeApi).GetMethod("llama_detokenize", hidden)!;

        var random = new Random(99);
        var sequences = Corpus(ours).Take(300).Select(text => ours.Encode(text, addSpecial: true, parseSpecial: true)).ToList();
        for (int i = 0; i < 300; i++) sequences.Add(Enumerable.Range(0, random.Next(1, 9)).Select(_ => random.Next(ours.VocabSize)).ToArray());
        // what llama.cpp's clean-up and leading-space rules act on
        foreach (string text in (string[])[" Hello , world !", "a ' b", "it 's I 'm we 're you 've they 'll he 'd", " x", "  two", "\n\nx"])
            sequences.Add(ours.Encode(text, addSpecial: false, parseSpecial: false));

        var buffer = new byte[1 << 16];
        var mismatches = new List<string>();
        foreach (var ids in sequences)
        {
            foreach (bool special in (bool[])[false, true])
            {
                int n;
                fixed (int* tokens = ids)
                fixed (byte* text = buffer)
                    n = (int)detokenize.Invoke(null, [vocab, System.Reflection.Pointer.Box(tokens, typeof(LLamaToken*)), ids.Length,
                        System.Reflection.Pointer.Box(text, typeof(byte*)), buffer.Length, false, special])!;
                Assert.True(n >= 0, "detokenize buffer too small");
                if (!buffer.AsSpan(0, n).SequenceEqual(ours.DecodeBytes(ids, special)) && mismatches.Count < 10)
                    mismatches.Add($"[{string.Join(' ', ids)}] (special {special}): llama.cpp '{Encoding.UTF8.GetString(buffer, 0, n)}' Loom '{ours.Decode(ids, special)}'");
            }
        }
        Assert.True(mismatches.Count == 0, string.Join('\n', mismatches));
    }

    /// <summary>The suites' strings, strings around the vocabulary's special tokens, and seeded random mixes of awkward characters.</summary>
    private static IEnumerable<string> Corpus(Tokenizer tokenizer, int randomStrings = 400)
    {
        foreach (string suite in (string[])["llama-spm", "phi-3", "gpt-2", "mpt", "refact", "deepseek-coder", "bert-bge"])
            foreach (var (text, _) in TokenizerSuiteTests.ReadCases(suite)) yield return text;

        var specials = Enumerable.Range(0, tokenizer.VocabSize)
            .Where(id => (tokenizer.Attributes(id) & (TokenAttributes.Control | TokenAttributes.UserDefined | TokenAttributes.Unknown)) != 0)
            .Select(tokenizer.Piece).Take(40).ToList();
        foreach (string special in specials)
        {
            yield return special;
            yield return $"Hello {special} world";
            yield return $"{special}\n  {special}x";
            yield return $" {special}{special} ";
        }

        // letters beyond U+FFFF, which deepseek-llm's pattern names and .NET patterns cannot
        foreach (string text in (string[])[" \U00010400\U00010401 x", "a\U0001E900b", "\U000118A0 \U00010C80!", "x \U000104B0"]) yield return text;

        string[] atoms =
        [
            "a", "Z", "hello", " world", "The", "I'm", "'s", "'LL", "'ve", "'RE", "don't", "0", "42", "1234567", "3.14", " ", "  ", "   ", "\t", "\n",
            "\r\n", "\n\n", " \n", "!", "?!", "...", ",", "-", "_", "(", ")", "[", "]", "{", "}", "<", ">", "/", "\\", "\"", "'", "`", "@", "#", "$",
            "%", "^", "&", "*", "+", "=", "|", "~", "é", "ü", "Ä", "ß", "ñ", "д", "Привет", "Ω", "λ", "日本", "語", "中文字", "한국어", "ㅋ", "あ", "カ",
            "🦙", "🤖", "👍🏽", "😀", "\u0301", "e\u0301", "\u00A0", "\u3000", "\u2028", "\u0085", "\u200B", "\u2581", "١٢٣", "٣", "Ⅻ", "½", "€", "™",
            "\u0001", "\u001F", "\u007F", "\uFEFF", "\uE000", "𝔘", "𐐀", "\U0001F600x", "<s>", "</s>", "<|endoftext|>", "<|user|>", "<unk>", "<|im_start|>",
            "\u1FD3", "\u2126", "\u212A", "\uFB00", "\uFF21", "\U0001E900", "\U00010400", "\uFF01", "\uFF0C", "\u3002", "\u3001", "\u2026", "\u0964", "\u06D4",
            "\u060C", "\uFF5E", "\u2018", "\u0E01", "\u0915\u093F", "\u05D0", "\u0627\u0644",
        ];
        var random = new Random(1234);
        for (int i = 0; i < randomStrings; i++)
        {
            var text = new StringBuilder();
            int atomCount = random.Next(0, 12);
            for (int j = 0; j < atomCount; j++) text.Append(atoms[random.Next(atoms.Length)]);
            yield return text.ToString();
        }
    }

    private static int Id(LLamaToken? token) => token is { } t ? (int)t : -1;
}
