using Loom.Core;
using Loom.Inference;
using Loom.Models.Architectures;
using Loom.Models.Gguf;
using Loom.Tests.Conformance;
using Loom.Training;
using Xunit.Abstractions;

namespace Loom.Tests;

/// <summary>
/// Tiny models trained by Loom for a few steps, one with the byte tokenizer (BPE vocabulary) and one with stories260K's
/// SentencePiece vocabulary, each exported as F32, F16 and Q8_0 once for the whole class.
/// </summary>
public sealed class TrainedExports : IDisposable
{
    public const string Bytes = "bytes";
    public const string Stories = "stories-spm";

    private readonly Dictionary<string, (Decoder Model, ITokenEncoder Encoder)> _trained = [];
    private readonly GgufFile _storiesFile = GgufFile.Open(SharedData.PathTo("models/stories260K/stories260K.gguf"));

    public string Folder { get; } = Directory.CreateTempSubdirectory("loom-export-llama-").FullName;

    public TrainedExports()
    {
        // Dim 32: every matrix row is whole Q8_0 blocks. Dim 48: only ffn_down (rows of Hidden = 64) is, the other
        // matrices fall back to F16, so the Q8_0 export writes a mixed file as llama.cpp's converter would.
        // Bytes carry less per token, so that model needs more steps before greedy decoding says more than one thing.
        Train(Bytes, new ByteTokenEncoder(), dim: 32, steps: 300);
        Train(Stories, new GgufTokenEncoder(_storiesFile), dim: 48, steps: 60);
    }

    public Decoder Model(string tokenizer) => _trained[tokenizer].Model;
    public ITokenEncoder Encoder(string tokenizer) => _trained[tokenizer].Encoder;
    public string PathOf(string tokenizer, ExportPrecision precision) => Path.Combine(Folder, $"{tokenizer}-{precision}.gguf");

    private void Train(string name, ITokenEncoder encoder, int dim, int steps)
    {
        var documents = Enumerable.Range(0, 12).Select(i => ExportLlamaCppTests.StoryText(i)).ToList();
        var data = TokenDataset.Create(documents, encoder, 0.1);
        var shape = new ModelShape { VocabSize = encoder.VocabSize, Dim = dim, Layers = 2, Heads = 4, KvHeads = 2, Hidden = 64, Context = 96 };
        var model = new Decoder(shape);
        model.Initialize(11);
        var trainer = new Trainer(model, data, new TrainingOptions
        {
            ContextLength = 32, Steps = steps, BatchSize = 4, WarmupSteps = 5, PeakLearningRate = 1e-2f, EvalInterval = 100, Seed = 3,
        });
        trainer.Run();
        foreach (var precision in Enum.GetValues<ExportPrecision>()) GgufExport.Write(PathOf(name, precision), model, encoder, precision);
        _trained[name] = (model, encoder);
    }

    public void Dispose()
    {
        _storiesFile.Dispose();
        try { Directory.Delete(Folder, recursive: true); } catch (IOException) { }
    }
}

/// <summary>
/// Models trained and exported by Loom load in llama.cpp and in Loom with the same tokens and logits: F32 files to
/// within 1e-4 of the logit range with identical greedy generation, F16 and Q8_0 files with the same argmax (away from
/// near-ties) and a small KL divergence.
/// </summary>
public sealed class ExportLlamaCppTests(TrainedExports exports, ITestOutputHelper output) : IClassFixture<TrainedExports>
{
    private const int ReferenceContext = 96;
    private const int GeneratedTokens = 24;
    private const double QuantizedMaxMeanKl = 1e-3;

    private static readonly string[] Sentences =
    [
        "Once upon a time, there was a little girl named Lily.", "She loved to play in the park with her red ball.",
        "One day, the sun was warm and the sky was blue.", "Tom saw a big dog and said hello.",
        "They were happy and went home to eat cake.", "The cat sat on the mat and looked at the bird.",
    ];

    /// <summary>Short story-like text, different for each <paramref name="index"/>.</summary>
    public static string StoryText(int index) =>
        string.Join(' ', Enumerable.Range(0, 3).Select(k => Sentences[(index * 5 + k * 7 + k * k) % Sentences.Length]));

    public static TheoryData<string, ExportPrecision> Cases() => new()
    {
        { TrainedExports.Bytes, ExportPrecision.F32 }, { TrainedExports.Bytes, ExportPrecision.F16 }, { TrainedExports.Bytes, ExportPrecision.Q8_0 },
        { TrainedExports.Stories, ExportPrecision.F32 }, { TrainedExports.Stories, ExportPrecision.F16 }, { TrainedExports.Stories, ExportPrecision.Q8_0 },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void LlamaCppAndLoomAgreeOnTheExportedModel(string tokenizer, ExportPrecision precision)
    {
        string path = exports.PathOf(tokenizer, precision);
        // The sequence must fit the context: bytes are one token each, so the byte model reads a shorter text.
        string text = tokenizer == TrainedExports.Bytes ? "She loved to play in the park with the red ball." : StoryText(1);
        var encoder = exports.Encoder(tokenizer);
        int[] expectedTokens = encoder.EncodeDocument(text);

        using var reference = new LlamaCppReference(path, ReferenceContext);
        using var model = TransformerModel.Load(path);
        int vocab = model.Config.VocabSize;
        Assert.Equal(vocab, reference.VocabSize);
        int[] tokens = model.Tokenizer.Encode(text, addSpecial: true, parseSpecial: false);
        Assert.Equal(expectedTokens, tokens);
        Assert.Equal(expectedTokens, reference.Tokenize(text, addSpecial: true, parseSpecial: false));
        Assert.InRange(tokens.Length, 16, ReferenceContext - GeneratedTokens);

        float[] expected = reference.EvaluateAll(tokens);
        var actual = new float[tokens.Length * vocab];
        using (var session = new InferenceSession(model, ReferenceContext, KvCacheType.F32)) session.EvaluateAll(tokens, actual);
        double relative = Comparison.MaxRelativeDiff(expected, actual, vocab);
        double kl = Comparison.MeanKlDivergence(expected, actual, vocab);
        var (agreement, decisive) = Comparison.DecisiveArgMaxAgreement(expected, actual, vocab, ConformanceLogitsTests.NearTieFraction);

        // How far the exported file is from the trained model itself (the training forward pass, F32).
        var trained = exports.Model(tokenizer);
        trained.Forward(tokens, [], 1, tokens.Length);
        double klFromTraining = Comparison.MeanKlDivergence(trained.Logits, expected, vocab);
        var (min, max) = Comparison.Range(expected);
        output.WriteLine($"{tokenizer} {precision}: {TensorTypes(path)}; {tokens.Length} positions x {vocab}, logits in [{min:F2}, {max:F2}]\n" +
                         $"  Loom vs llama.cpp: max |diff| / logit range {relative:E2}, mean KL {kl:E2}, argmax agreement {agreement:P1} of {decisive} decisive positions\n" +
                         $"  llama.cpp on the file vs the training forward pass: mean KL {klFromTraining:E2}");

        if (precision == ExportPrecision.F32)
        {
            Assert.True(relative <= ConformanceLogitsTests.F32Tolerance, $"max relative logit difference {relative:E3} exceeds {ConformanceLogitsTests.F32Tolerance:E0}");
            Assert.True(klFromTraining < 1e-6, $"the F32 file's logits differ from the trained model's (mean KL {klFromTraining:E2})");
        }
        else
        {
            Assert.True(kl <= QuantizedMaxMeanKl, $"mean KL divergence {kl:E3} exceeds {QuantizedMaxMeanKl:E0}");
            Assert.True(decisive >= tokens.Length / 2, $"only {decisive} of {tokens.Length} positions have a decisive argmax");
            Assert.Equal(1.0, agreement);
            Assert.True(klFromTraining <= QuantizedMaxMeanKl, $"the {precision} file drifts from the trained model: mean KL {klFromTraining:E3}");
        }
    }

    [Theory]
    [InlineData(TrainedExports.Bytes)]
    [InlineData(TrainedExports.Stories)]
    public void GreedyGenerationOfTheF32ExportIsIdentical(string tokenizer)
    {
        string path = exports.PathOf(tokenizer, ExportPrecision.F32);
        using var reference = new LlamaCppReference(path, ReferenceContext);
        using var model = TransformerModel.Load(path);
        int[] prompt = model.Tokenizer.Encode("Once upon a time, there was a little", addSpecial: true, parseSpecial: false);
        int[] expected = reference.GenerateGreedy(prompt, GeneratedTokens);

        using var session = new InferenceSession(model, ReferenceContext, KvCacheType.F32);
        var actual = new int[GeneratedTokens];
        int next = Comparison.ArgMax(session.Evaluate(prompt));
        for (int step = 0; step < actual.Length; step++)
        {
            actual[step] = next;
            if (step < actual.Length - 1) next = Comparison.ArgMax(session.Evaluate([next]));
        }
        output.WriteLine($"{tokenizer}: llama.cpp {Escape(model.Tokenizer.Decode(expected))}\n{tokenizer}: Loom      {Escape(model.Tokenizer.Decode(actual))}");
        Assert.Equal(expected, actual);
        Assert.True(expected.Distinct().Count() > 2, "the trained model repeats one token: the comparison would show little");
    }

    [Fact]
    public void Q8_0ExportStoresWholeBlockMatricesAsQ8_0AndTheRestAsLlamaCppConvertersDo()
    {
        foreach (string tokenizer in new[] { TrainedExports.Bytes, TrainedExports.Stories })
        {
            var model = exports.Model(tokenizer);
            using var file = GgufFile.Open(exports.PathOf(tokenizer, ExportPrecision.Q8_0));
            Assert.Equal(7L, file.GetInteger("general.file_type"));
            foreach (var slot in model.Layout.Slots)
            {
                var type = file.Tensors.Single(t => t.Name == slot.Name).Type;
                var expected = slot.Rows == 1 ? GgmlType.F32 : slot.Cols % 32 == 0 ? GgmlType.Q8_0 : GgmlType.F16;
                Assert.True(expected == type, $"{tokenizer}: {slot.Name} ({slot.Rows}x{slot.Cols}) is {type}, expected {expected}");
            }
        }
        using var f16 = GgufFile.Open(exports.PathOf(TrainedExports.Bytes, ExportPrecision.F16));
        Assert.Equal(1L, f16.GetInteger("general.file_type"));
        using var f32 = GgufFile.Open(exports.PathOf(TrainedExports.Bytes, ExportPrecision.F32));
        Assert.Equal(0L, f32.GetInteger("general.file_type"));
    }

    private static string TensorTypes(string path)
    {
        using var file = GgufFile.Open(path);
        return string.Join(", ", file.Tensors.GroupBy(t => t.Type).Select(g => $"{g.Count()} {g.Key}"));
    }

    private static string Escape(string text) => text.Replace("\n", "\\n");
}
