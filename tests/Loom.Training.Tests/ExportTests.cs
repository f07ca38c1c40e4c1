using Loom.Inference;
using Loom.Models.Architectures;
using Loom.Models.Gguf;
using Loom.Training;
using Xunit.Abstractions;

namespace Loom.Training.Tests;

/// <summary>Trained weights exported to GGUF run in Loom's inference engine with the logits of the training forward pass.</summary>
public sealed class ExportTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("loom-export-").FullName;

    private static Decoder TrainedModel()
    {
        var data = TokenDataset.Create([TrainerTests.SampleText(600, 3)], new ByteTokenEncoder(), 0.1);
        var model = new Decoder(TrainerTests.Small);
        model.Initialize(4);
        var trainer = new Trainer(model, data, new TrainingOptions
        {
            ContextLength = 16, Steps = 6, BatchSize = 4, WarmupSteps = 2, PeakLearningRate = 1e-2f, EvalInterval = 100,
        });
        trainer.Run();
        Assert.Equal(6, trainer.Step);
        return model;
    }

    [Theory]
    [InlineData(ExportPrecision.F32, 1e-4)]
    [InlineData(ExportPrecision.F16, 2e-3)]
    public void InferenceOnTheExportedModelGivesTheTrainingLogits(ExportPrecision precision, double tolerance)
    {
        var trained = TrainedModel();
        string path = Path.Combine(_dir, $"model-{precision}.gguf");
        GgufExport.Write(path, trained, new ByteTokenEncoder(), precision);

        const string text = "the model learns";
        int[] tokens = new ByteTokenEncoder().EncodeDocument(text);
        trained.Forward(tokens, [], 1, tokens.Length);
        float[] expected = trained.Logits.ToArray();

        using var model = TransformerModel.Load(path);
        Assert.Equal(TrainerTests.Small.Dim, model.Config.EmbeddingLength);
        Assert.Equal(TrainerTests.Small.KvHeads, model.Config.HeadCountKv);
        Assert.Equal(tokens, model.Tokenizer.Encode(text, addSpecial: true, parseSpecial: false));
        using var session = new InferenceSession(model);
        var logits = new float[tokens.Length * TrainerTests.Small.VocabSize];
        session.EvaluateAll(tokens, logits);

        double error = ReferenceTests.RelativeError(logits, expected);
        output.WriteLine($"{precision}: largest logit difference relative to the largest logit: {error:E2}");
        Assert.True(error < tolerance, $"{precision}: relative logit error {error:E2}");
        Assert.Equal(ArgMax(expected, tokens.Length), ArgMax(logits, tokens.Length));
    }

    [Fact]
    public void ExportCarriesAnExistingGgufTokenizer()
    {
        string source = SharedModel("models/stories260K/stories260K.gguf");
        using var file = GgufFile.Open(source);
        var encoder = new GgufTokenEncoder(file);
        var model = new Decoder(TrainerTests.Small with { VocabSize = encoder.VocabSize });
        model.Initialize(1);
        string path = Path.Combine(_dir, "spm.gguf");
        GgufExport.Write(path, model, encoder, ExportPrecision.F32);

        using var exported = TransformerModel.Load(path);
        const string text = "Once upon a time, a little girl";
        Assert.Equal(encoder.EncodeDocument(text), exported.Tokenizer.Encode(text, addSpecial: true, parseSpecial: false));
        Assert.Equal(512, exported.Config.VocabSize);
    }

    [Fact]
    public void ExportRejectsATokenizerOfAnotherVocabulary()
    {
        var model = new Decoder(TrainerTests.Small with { VocabSize = 300 });
        Assert.Throws<ArgumentException>(() => GgufExport.Write(Path.Combine(_dir, "x.gguf"), model, new ByteTokenEncoder(), ExportPrecision.F32));
    }

    private static int[] ArgMax(float[] logits, int rows)
    {
        int vocab = logits.Length / rows;
        return Enumerable.Range(0, rows).Select(r => Array.IndexOf(logits, logits.Skip(r * vocab).Take(vocab).Max(), r * vocab) - r * vocab).ToArray();
    }

    /// <summary>Reference data lives in ../shared beside the checkout.</summary>
    private static string SharedModel(string relative)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Loom.slnx")))
            {
                string path = Path.Combine(dir.Parent!.FullName, "shared", relative);
                return File.Exists(path) ? path : throw new FileNotFoundException($"reference file {path} is missing: this test needs ../shared beside the checkout");
            }
        throw new DirectoryNotFoundException("Loom.slnx not found above the test binaries");
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
