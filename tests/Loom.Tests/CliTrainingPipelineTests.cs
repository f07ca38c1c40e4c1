using Loom.Cli;
using Loom.Inference.Chat;
using Loom.Models.Architectures;

namespace Loom.Tests;

/// <summary>
/// The commands that build a model from text, chained as scripts/default-model/train.sh chains them: `loom tokenizer
/// train`, `loom train` from scratch with that tokenizer, then `loom train --init-from` on ChatML data.
/// </summary>
public sealed class CliTrainingPipelineTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("loom-pipeline-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = LoomCli.Run(args, new CliConsole(new StringReader(""), output, error));
        return (code, output.ToString(), error.ToString());
    }

    private string Write(string name, string text)
    {
        string path = Path.Combine(_dir, name);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public void TokenizerTrainThenTrainThenContinueOnChatData()
    {
        string primer = File.ReadAllText(Path.Combine(SharedData.RepoRoot, "data", "corpus", "04_attention.txt"));
        string prose = Write("prose/attention.txt", primer);
        var (code, _, err) = Run("tokenizer", "train", "--data", prose, "--vocab-size", "512", "--out", Path.Combine(_dir, "tok.gguf"));
        Assert.True(code == 0, err);
        Assert.Contains("512 tokens", err);

        string[] tiny = ["--dim", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--ctx", "32", "--batch", "2", "--warmup", "1", "--eval-every", "2"];
        (code, _, err) = Run(["train", "--data", prose, "--out", Path.Combine(_dir, "stage1"), "--tokenizer-from", Path.Combine(_dir, "tok.gguf"), "--steps", "2", .. tiny]);
        Assert.True(code == 0, err);

        string chat = Write("chat/qa.jsonl", string.Concat(Enumerable.Range(0, 40).Select(i =>
            $"{{\"text\":\"<|im_start|>user\\nWhat is attention number {i}?<|im_end|>\\n<|im_start|>assistant\\nA weighted sum of values.<|im_end|>\\n\"}}\n")));
        (code, _, err) = Run("train", "--data", chat, "--out", Path.Combine(_dir, "stage2"), "--tokenizer-from", Path.Combine(_dir, "tok.gguf"),
            "--parse-special", "--init-from", Path.Combine(_dir, "stage1", "checkpoint.bin"), "--ctx", "32", "--batch", "2", "--steps", "2", "--warmup", "1");
        Assert.True(code == 0, err);
        Assert.Contains("initialized from", err);

        // Continuing with another vocabulary (here the byte tokenizer) would index the embedding wrongly: refused.
        (code, _, err) = Run("train", "--data", prose, "--out", Path.Combine(_dir, "stage3"),
            "--init-from", Path.Combine(_dir, "stage1", "checkpoint.bin"), "--ctx", "32", "--batch", "2", "--steps", "1");
        Assert.Equal(1, code);
        Assert.Contains("the checkpoint's vocabulary (512) differs from the tokenizer's", err);
        Assert.False(File.Exists(Path.Combine(_dir, "stage3", "checkpoint.bin")));

        using var model = TransformerModel.Load(Path.Combine(_dir, "stage2", "model.gguf"));
        Assert.Equal(512, model.Config.VocabSize);
        Assert.Equal(ChatTemplateFamily.ChatMl, ChatTemplate.Detect(model.Config.ChatTemplate)!.Family);
        // With --parse-special the markers are single control tokens, as the chat template will produce them.
        Assert.Equal([0, 1], model.Tokenizer.Encode("<|im_start|>", addSpecial: true, parseSpecial: true));
    }

    [Fact]
    public void BadPipelineArgumentsFailWithOneLine()
    {
        string text = Write("t.txt", "some text to learn from, some text to learn from");
        foreach (var (args, expected) in new (string[], string)[]
        {
            (["tokenizer", "train", "--out", Path.Combine(_dir, "x.gguf")], "--data PATH is required"),
            (["tokenizer", "train", "--data", text, "--vocab-size", "100", "--out", Path.Combine(_dir, "x.gguf")], "no room for merges"),
            (["train", "--data", text, "--out", Path.Combine(_dir, "o"), "--parse-special"], "--parse-special needs --tokenizer-from"),
            (["train", "--data", text, "--out", Path.Combine(_dir, "o"), "--init-from", Path.Combine(_dir, "none.bin"), "--ctx", "8"], "does not exist"),
        })
        {
            var (code, _, err) = Run(args);
            Assert.NotEqual(0, code);
            Assert.Contains(expected, err);
            Assert.Single(err.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => l.StartsWith("loom: error"));
        }
    }
}
