using System.Text;
using System.Text.Json;

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

/// <summary>Text to token ids for training.</summary>
public interface ITokenEncoder
{
    int VocabSize { get; }
    /// <summary>The tokens of one document, with whatever marks its start (a BOS token) included.</summary>
    int[] EncodeDocument(string text);
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
}

/// <summary>An existing model's tokenizer (e.g. one read from a GGUF); documents start with BOS when the model expects it.</summary>
public sealed class TokenizerEncoder(Loom.Models.Tokenizers.Tokenizer tokenizer) : ITokenEncoder
{
    public int VocabSize => tokenizer.VocabSize;
    public int[] EncodeDocument(string text) => tokenizer.Encode(text, addSpecial: true, parseSpecial: false);
}
