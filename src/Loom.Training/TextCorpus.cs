using System.Text;
using System.Text.Json;
using Loom.Models.Gguf;
using Loom.Models.Tokenizers;

namespace Loom.Training;

/// <summary>
/// Training text: a plain-text file, a JSONL file (one object per line with a string field "text"), or a folder of
/// them (searched recursively, in ordinal path order so the corpus is the same on every machine).
/// </summary>
public static class TextCorpus
{
    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>The documents under <paramref name="path"/>; throws <see cref="InvalidDataException"/> for empty or non-UTF-8 data.</summary>
    public static IReadOnlyList<string> Load(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        IEnumerable<string> files;
        if (Directory.Exists(path))
            files = Directory.EnumerateFiles(path, "*", SearchOption.AllDirectories)
                .Where(f => !Path.GetFileName(f).StartsWith('.'))
                .Order(StringComparer.Ordinal);
        else if (File.Exists(path))
            files = [path];
        else
            throw new FileNotFoundException($"training data '{path}' does not exist", path);

        var documents = new List<string>();
        foreach (string file in files)
        {
            if (file.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase)) documents.AddRange(ReadJsonLines(file));
            else documents.Add(ReadText(file));
        }
        documents.RemoveAll(string.IsNullOrWhiteSpace);
        if (documents.Count == 0) throw new InvalidDataException($"training data '{path}' holds no text");
        return documents;
    }

    private static string ReadText(string file)
    {
        try
        {
            string text = StrictUtf8.GetString(File.ReadAllBytes(file));
            return text.StartsWith('\uFEFF') ? text[1..] : text;
        }
        catch (DecoderFallbackException e)
        {
            throw new InvalidDataException($"{file} is not valid UTF-8 text (bad byte at offset {e.Index})", e);
        }
    }

    private static IEnumerable<string> ReadJsonLines(string file)
    {
        string[] lines = ReadText(file).Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            string line = lines[i].Trim();
            if (line.Length == 0) continue;
            string? text;
            try
            {
                using var json = JsonDocument.Parse(line);
                text = json.RootElement.ValueKind == JsonValueKind.Object && json.RootElement.TryGetProperty("text", out var field)
                       && field.ValueKind == JsonValueKind.String
                    ? field.GetString()
                    : throw new InvalidDataException($"{file}:{i + 1}: expected an object with a string field \"text\"");
            }
            catch (JsonException e)
            {
                throw new InvalidDataException($"{file}:{i + 1}: not valid JSON ({e.Message})", e);
            }
            yield return text!;
        }
    }
}

/// <summary>Text to token ids for training, and the tokenizer's description for an exported GGUF.</summary>
public interface ITokenEncoder
{
    int VocabSize { get; }
    /// <summary>The tokens of one document, with whatever marks its start (a BOS token) included.</summary>
    int[] EncodeDocument(string text);
    /// <summary>Adds the tokenizer.* metadata that lets GGUF readers (Loom, llama.cpp) tokenize for the model.</summary>
    void DescribeInGguf(GgufWriter writer);
}

/// <summary>The fallback tokenizer: one token per UTF-8 byte (vocabulary 256), nothing to train.</summary>
public sealed class ByteTokenEncoder : ITokenEncoder
{
    public int VocabSize => 256;

    public int[] EncodeDocument(string text)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(text);
        var tokens = new int[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) tokens[i] = bytes[i];
        return tokens;
    }

    /// <summary>
    /// A byte-level BPE vocabulary with no merges: token b is byte b written in GPT-2's byte-to-character mapping, so
    /// GGUF readers encode text to exactly the byte ids this encoder produces.
    /// </summary>
    public void DescribeInGguf(GgufWriter writer)
    {
        var tokens = new string[256];
        for (int b = 0; b < 256; b++) tokens[b] = Gpt2ByteMapping.Map([(byte)b]);
        writer.Add("tokenizer.ggml.model", "gpt2");
        writer.Add("tokenizer.ggml.pre", "default");
        writer.Add("tokenizer.ggml.tokens", tokens);
        writer.Add("tokenizer.ggml.token_type", Enumerable.Repeat(1, 256).ToArray());
        writer.Add("tokenizer.ggml.merges", Array.Empty<string>());
        writer.Add("tokenizer.ggml.add_bos_token", false);
    }
}

/// <summary>
/// The tokenizer of an existing GGUF model (or a tokenizer-only GGUF); documents start with BOS when that model expects
/// it. With <c>parseSpecial</c>, control-token texts in the documents (such as ChatML's &lt;|im_start|&gt;) become those
/// tokens, so chat-formatted training text teaches the model its template.
/// </summary>
public sealed class GgufTokenEncoder : ITokenEncoder
{
    private readonly Tokenizer _tokenizer;
    private readonly bool _parseSpecial;
    private readonly List<KeyValuePair<string, GgufValue>> _metadata;

    public GgufTokenEncoder(GgufFile file, bool parseSpecial = false)
    {
        _tokenizer = Tokenizer.FromGguf(file);
        _parseSpecial = parseSpecial;
        _metadata = file.MetadataKeys.Where(k => k.StartsWith("tokenizer.", StringComparison.Ordinal))
            .Select(k => new KeyValuePair<string, GgufValue>(k, file.Metadata[k])).ToList();
    }

    public int VocabSize => _tokenizer.VocabSize;
    public int[] EncodeDocument(string text) => _tokenizer.Encode(text, addSpecial: true, parseSpecial: _parseSpecial);

    /// <summary>Copies the source model's tokenizer.* metadata unchanged.</summary>
    public void DescribeInGguf(GgufWriter writer)
    {
        foreach (var (key, value) in _metadata) writer.AddMetadata(key, value);
    }
}
