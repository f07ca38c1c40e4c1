using System.Text;
using Loom.Models.Gguf;
using Loom.Models.Tokenizers;

namespace Loom.Tests;

public class TokenizerTests
{
    private static Tokenizer Vocab(string name) => TokenizerSuiteTests.Load(name);

    /// <summary>
    /// llama2.c's encode (run.c) on tok512.bin, recorded in stories260K_reference_trace.txt, against the GGUF vocabulary of the
    /// same model. llama2.c prepends a " " token for non-empty text and merges by best score, leftmost first, exactly as
    /// llama.cpp's SPM tokenizer with add_space_prefix does, so every line must match with addSpecial (BOS) on.
    /// </summary>
    [Fact]
    public void Stories260KMatchesLlama2cEncode()
    {
        using var file = GgufFile.Open(SharedData.PathTo("models/stories260K/stories260K.gguf"));
        var tokenizer = Tokenizer.FromGguf(file);
        var lines = File.ReadAllLines(SharedData.PathTo("models/stories260K/stories260K_reference_trace.txt"), Encoding.UTF8)
            .Where(line => line.StartsWith("ENCODE\t", StringComparison.Ordinal)).ToList();
        Assert.Equal(7, lines.Count);
        foreach (var line in lines)
        {
            var fields = line.Split('\t');
            string quoted = fields[1];
            Assert.True(quoted.Length >= 2 && quoted[0] == '"' && quoted[^1] == '"', line);
            string text = quoted[1..^1];
            var expected = fields[2].Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray();
            Assert.Equal(expected, tokenizer.Encode(text, addSpecial: true, parseSpecial: false));
        }
    }

    [Fact]
    public void SpecialIdsAndFlagsFollowLlamaCpp()
    {
        var spm = Vocab("llama-spm");
        Assert.Equal((1, 2, 0), (spm.BosId, spm.EosId, spm.UnknownId));
        Assert.True(spm.AddBos);
        Assert.False(spm.AddEos);
        Assert.Equal([1], spm.Encode("", addSpecial: true));
        Assert.Empty(spm.Encode("", addSpecial: false));

        var gpt2 = Vocab("gpt-2"); // no add_bos_token key: llama.cpp's BPE default adds nothing
        Assert.False(gpt2.AddBos);
        Assert.Equal(50256, gpt2.EosId);
        Assert.Equal(gpt2.Encode("Hello", addSpecial: false), gpt2.Encode("Hello", addSpecial: true));

        var coder = Vocab("deepseek-coder");
        Assert.True(coder.AddBos);
        Assert.Equal(32013, coder.Encode("x", addSpecial: true)[0]);
    }

    [Fact]
    public void EndOfGenerationCoversEosAndTurnEndTokens()
    {
        var phi3 = Vocab("phi-3");
        Assert.True(phi3.IsEndOfGeneration(32000));  // <|endoftext|>, the EOS
        Assert.True(phi3.IsEndOfGeneration(32007));  // <|end|>
        Assert.Equal(32007, phi3.EotId);
        Assert.False(phi3.IsEndOfGeneration(32010)); // <|user|>
        Assert.False(phi3.IsEndOfGeneration(1));
        Assert.False(phi3.IsEndOfGeneration(-1));

        var spm = Vocab("llama-spm");
        Assert.True(spm.IsEndOfGeneration(2));
        Assert.False(spm.IsEndOfGeneration(1));
    }

    [Fact]
    public void ParseSpecialTurnsControlTextIntoTokens()
    {
        var phi3 = Vocab("phi-3");
        string chat = "<|user|>\nHi<|end|>\n<|assistant|>";
        var parsed = phi3.Encode(chat, addSpecial: false, parseSpecial: true);
        Assert.Equal(32010, parsed[0]);
        Assert.Contains(32007, parsed);
        Assert.Equal(32001, parsed[^1]);
        // phi-3's special tokens strip the whitespace that follows them (llama.cpp sets RSTRIP by model name)
        Assert.Equal(phi3.Encode("<|user|>Hi", false, true), phi3.Encode("<|user|> \n Hi", false, true));

        var literal = phi3.Encode(chat, addSpecial: false, parseSpecial: false);
        Assert.DoesNotContain(32010, literal);
        Assert.DoesNotContain(32007, literal);
        Assert.Equal(chat, phi3.Decode(literal));

        // control tokens render only on request
        Assert.Equal("", phi3.Decode([32010]));
        Assert.Equal("<|user|>", phi3.Decode([32010], renderSpecial: true));
        Assert.Empty(phi3.TokenBytes(32007));
        Assert.Equal("<|end|>"u8.ToArray(), phi3.TokenBytes(32007, renderSpecial: true));
    }

    [Fact]
    public void UserDefinedTokensAreSplitOutEvenWithoutParseSpecial()
    {
        // mpt/neox vocabularies define runs of spaces as user-defined tokens; llama.cpp cuts them out before BPE
        var mpt = Vocab("mpt");
        Assert.Equal(TokenAttributes.UserDefined, mpt.Attributes(50276) & TokenAttributes.UserDefined);
        Assert.Equal("  ", mpt.Piece(50276));
        Assert.Contains(50276, mpt.Encode("a  b", addSpecial: false, parseSpecial: false));
    }

    [Fact]
    public void DecodeFollowsLlamaDetokenize()
    {
        var spm = Vocab("llama-spm");
        var ids = spm.Encode("Hello world", addSpecial: true);
        Assert.Equal(1, ids[0]);
        // llama_detokenize drops the added space from the first token only, even when that token is a BOS rendering as nothing
        Assert.Equal(" Hello world", spm.Decode(ids));
        Assert.Equal("<s> Hello world", spm.Decode(ids, renderSpecial: true));
        Assert.Equal("Hello world", spm.Decode(ids.AsSpan(1)));
        Assert.Equal(" Hello"u8.ToArray(), spm.TokenBytes(ids[1]));  // token_to_piece keeps it
        Assert.Equal(" Hello world", spm.Decode(spm.Encode(" Hello world", false)));

        var gpt2 = Vocab("gpt-2");
        Assert.Equal("Hello, world! It's", gpt2.Decode(gpt2.Encode("Hello, world! It's", false)));
        Assert.Equal("a.", gpt2.Decode(gpt2.Encode("a .", false))); // llama.cpp's clean-up of " ."
        Assert.Throws<ArgumentOutOfRangeException>(() => gpt2.Decode([gpt2.VocabSize]));
        Assert.Throws<ArgumentOutOfRangeException>(() => gpt2.TokenBytes(-1));
    }

    [Fact]
    public void ByteFallbackCoversCharactersOutsideTheVocabulary()
    {
        var spm = Vocab("llama-spm");
        string text = "🦙 \u0001";
        var ids = spm.Encode(text, addSpecial: false);
        Assert.Contains(ids, id => spm.Attributes(id) == TokenAttributes.Byte);
        Assert.Equal(text, spm.Decode(ids));
    }

    [Theory]
    [InlineData("llama-spm")]
    [InlineData("gpt-2")]
    public void StreamingDecoderHoldsBackSplitCharacters(string suite)
    {
        var tokenizer = Vocab(suite);
        string text = "Hi 🦙🤖 日本語 ünïcödé ok";
        var ids = tokenizer.Encode(text, addSpecial: false);
        // the emoji must really arrive in several tokens for this to test anything
        Assert.Contains(ids, id => Encoding.UTF8.GetString(tokenizer.TokenBytes(id)).Contains('\uFFFD'));

        var decoder = new StreamingDecoder(tokenizer);
        var streamed = new StringBuilder();
        foreach (int id in ids)
        {
            string part = decoder.Push(id);
            Assert.DoesNotContain('\uFFFD', part);
            if (part.Length > 0) Assert.False(char.IsHighSurrogate(part[^1]), "a surrogate pair was split");
            streamed.Append(part);
        }
        streamed.Append(decoder.Flush());
        string expected = Encoding.UTF8.GetString(ids.SelectMany(id => tokenizer.TokenBytes(id)).ToArray());
        Assert.Equal(expected, streamed.ToString());
        Assert.Contains("🦙🤖 日本語", streamed.ToString());
    }

    [Fact]
    public void StreamingDecoderFlushesAnUnfinishedCharacterAsReplacement()
    {
        var spm = Vocab("llama-spm");
        var ids = spm.Encode("🦙", addSpecial: false).Where(id => spm.Attributes(id) == TokenAttributes.Byte).ToArray();
        Assert.Equal(4, ids.Length);
        var decoder = new StreamingDecoder(spm);
        Assert.Equal("", decoder.Push(ids[0]));
        Assert.Equal("", decoder.Push(ids[1]));
        Assert.Equal("\uFFFD", decoder.Flush());
        foreach (int id in ids[..3]) Assert.Equal("", decoder.Push(id));
        Assert.Equal("🦙", decoder.Push(ids[3]));
        Assert.Equal("", decoder.Flush());
    }

    [Fact]
    public void UnsupportedPreTokenizerIsRejectedClearly()
    {
        // a copy of gpt-2's metadata naming a pre-tokenizer Loom does not implement
        string path = ModelGgufWriter.EditedCopy(SharedData.PathTo("vocab/llama.cpp/ggml-vocab-gpt-2.gguf"), w => w.Set("tokenizer.ggml.pre", "tekken"));
        try
        {
            using var file = GgufFile.Open(path);
            var error = Assert.Throws<NotSupportedException>(() => Tokenizer.FromGguf(file));
            Assert.Contains("tekken", error.Message);
        }
        finally { File.Delete(path); }
    }
}
