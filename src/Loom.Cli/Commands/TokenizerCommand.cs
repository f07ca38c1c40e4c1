using System.CommandLine;
using System.Diagnostics;
using Loom.Models.Tokenizers;
using Loom.Training;

namespace Loom.Cli.Commands;

/// <summary>`loom tokenizer train`: learns a byte-level BPE vocabulary from text and writes it as a tokenizer-only GGUF.</summary>
internal static class TokenizerCommand
{
    public static Command Create(CliConsole console)
    {
        var data = new Option<string?>("--data") { Description = "training text: a file, a folder of files, or JSONL with a \"text\" field", HelpName = "PATH" };
        var vocabSize = new Option<int>("--vocab-size") { Description = "tokens in the vocabulary, special tokens and the 256 bytes included", DefaultValueFactory = _ => 4096 };
        var output = new Option<string?>("--out", "-o") { Description = "GGUF file to write (tokenizer.* metadata only)", HelpName = "FILE" };
        var special = new Option<string[]>("--special")
        {
            Description = "special tokens, the first marking document boundaries (default: <|endoftext|> <|im_start|> <|im_end|>)",
            AllowMultipleArgumentsPerToken = true,
        };
        var train = new Command("train", "Train a byte-level BPE tokenizer; use it with `loom train --tokenizer-from FILE`") { data, vocabSize, output, special };
        train.SetAction(r => LoomCli.Guard(console, () =>
        {
            string dataPath = r.GetValue(data) ?? throw new CliException("--data PATH is required");
            string outPath = r.GetValue(output) ?? throw new CliException("--out FILE is required");
            string[]? specials = r.GetValue(special) is { Length: > 0 } s ? s : null;
            var clock = Stopwatch.StartNew();
            var documents = TextCorpus.Load(dataPath);
            int lastPercent = -1;
            var vocabulary = BpeTrainer.Train(documents, r.GetValue(vocabSize), specials, (done, total) =>
            {
                int percent = 100 * done / total;
                if (percent / 10 == lastPercent / 10) return;
                lastPercent = percent;
                console.Error.WriteLine($"merges: {done}/{total}");
            });
            vocabulary.Save(outPath);
            console.Error.WriteLine($"wrote {outPath}: {vocabulary.VocabSize} tokens ({vocabulary.MergeCount} merges) from {documents.Count} documents in {clock.Elapsed.TotalSeconds:F1} s");
            return 0;
        }));
        return new Command("tokenizer", "Tokenizer tools") { train };
    }
}
