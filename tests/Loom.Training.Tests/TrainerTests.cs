using System.Text;
using Loom.Training;

namespace Loom.Training.Tests;

public sealed class TrainerTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("loom-train-").FullName;

    internal static readonly ModelShape Small = new()
    {
        VocabSize = 256, Dim = 32, Layers = 2, Heads = 4, KvHeads = 2, Hidden = 64, Context = 16,
    };

    /// <summary>Deterministic pseudo-English: words drawn from a small list.</summary>
    internal static string SampleText(int words, ulong seed)
    {
        string[] vocabulary = ["the", "model", "learns", "to", "predict", "next", "token", "from", "context", "and", "loss", "falls"];
        var random = new DeterministicRandom(seed);
        var text = new StringBuilder();
        for (int i = 0; i < words; i++) text.Append(vocabulary[random.NextInt(vocabulary.Length)]).Append(i % 9 == 8 ? ".\n" : " ");
        return text.ToString();
    }

    private static TokenDataset SampleData() =>
        TokenDataset.Create([SampleText(800, 1), SampleText(400, 2)], new ByteTokenEncoder(), validationFraction: 0.1);

    private TrainingOptions Options(int steps, TrainingPrecision precision = TrainingPrecision.Fp32) => new()
    {
        Precision = precision,
        Steps = steps, BatchSize = 4, ContextLength = 16, GradientAccumulation = 2, PeakLearningRate = 3e-3f, MinimumLearningRate = 3e-4f,
        WarmupSteps = 3, AttentionDropout = 0.1f, ResidualDropout = 0.1f, EvalInterval = 4, EvalBatches = 2, Seed = 9,
        CheckpointPath = Path.Combine(_dir, "checkpoint.bin"),
    };

    private static Trainer NewTrainer(TokenDataset data, TrainingOptions options)
    {
        var model = new Decoder(Small);
        model.Initialize(options.Seed);
        return new Trainer(model, data, options);
    }

    [Theory]
    [InlineData(TrainingPrecision.Fp32)]
    [InlineData(TrainingPrecision.Bf16)]
    public void ResumedRunReproducesTheLossesOfAnUninterruptedOne(TrainingPrecision precision)
    {
        var data = SampleData();
        var options = Options(12, precision);
        string saved = Path.Combine(_dir, "step8.bin");
        var uninterrupted = NewTrainer(data, options);
        var losses = new List<double>();
        uninterrupted.Run(step => losses.Add(step.Loss), evaluation =>
        {
            if (evaluation.Step == 8) File.Copy(options.CheckpointPath!, saved);
        });
        Assert.Equal(12, losses.Count);
        Assert.True(losses[^1] < losses[0], $"loss did not fall: {losses[0]} → {losses[^1]}");

        var resumed = Checkpoint.Resume(saved, data, options);
        Assert.Equal(8, resumed.Step);
        var resumedLosses = new List<double>();
        resumed.Run(step => resumedLosses.Add(step.Loss));
        Assert.Equal(losses[8..], resumedLosses);
        Assert.Equal(uninterrupted.Model.Parameters, resumed.Model.Parameters);
        Assert.Equal(uninterrupted.BestValidationLoss, resumed.BestValidationLoss);
    }

    [Fact]
    public void FailedCheckpointWriteLeavesThePreviousOneIntact()
    {
        var options = Options(8);
        var trainer = NewTrainer(SampleData(), options);
        trainer.TrainStep();
        Checkpoint.Save(options.CheckpointPath!, trainer);
        byte[] before = File.ReadAllBytes(options.CheckpointPath!);
        trainer.TrainStep();

        string temporary = options.CheckpointPath + ".tmp";
        // A full disk: writes to /dev/full fail with ENOSPC.
        if (File.Exists("/dev/full"))
        {
            File.CreateSymbolicLink(temporary, "/dev/full");
            var full = Assert.Throws<IOException>(() => Checkpoint.Save(options.CheckpointPath!, trainer));
            Assert.Contains("previous checkpoint", full.Message);
            Assert.False(File.Exists(temporary) || Directory.Exists(temporary));
            Assert.Equal(before, File.ReadAllBytes(options.CheckpointPath!));
        }
        // A temporary file that cannot be created at all.
        Directory.CreateDirectory(temporary);
        Assert.Throws<IOException>(() => Checkpoint.Save(options.CheckpointPath!, trainer));
        Assert.Equal(before, File.ReadAllBytes(options.CheckpointPath!));
        Assert.Equal(1, Checkpoint.Resume(options.CheckpointPath!, SampleData(), options).Step);
    }

    [Fact]
    public void CorruptTruncatedOrForeignCheckpointsAreRejectedClearly()
    {
        var options = Options(4);
        var trainer = NewTrainer(SampleData(), options);
        trainer.TrainStep();
        Checkpoint.Save(options.CheckpointPath!, trainer);
        byte[] good = File.ReadAllBytes(options.CheckpointPath!);

        string corrupt = Path.Combine(_dir, "corrupt.bin");
        byte[] flipped = (byte[])good.Clone();
        flipped[good.Length / 2] ^= 0x40;
        File.WriteAllBytes(corrupt, flipped);
        Assert.Contains("corrupt", Assert.Throws<InvalidDataException>(() => Checkpoint.Resume(corrupt, SampleData(), options)).Message);

        File.WriteAllBytes(corrupt, good[..(good.Length - 100)]);
        Assert.Contains("corrupt or truncated", Assert.Throws<InvalidDataException>(() => Checkpoint.ReadShape(corrupt)).Message);

        File.WriteAllText(corrupt, "not a checkpoint at all, just some text that is long enough");
        Assert.Contains("not a Loom training checkpoint", Assert.Throws<InvalidDataException>(() => Checkpoint.ReadShape(corrupt)).Message);

        var otherShape = new Trainer(new Decoder(Small with { Hidden = 96 }), SampleData(), options);
        Assert.Contains("shape", Assert.Throws<InvalidDataException>(() => Checkpoint.Restore(options.CheckpointPath!, otherShape)).Message);
    }

    [Fact]
    public void EarlyStoppingStopsAfterPatienceEvaluationsWithoutImprovement()
    {
        // Training text and validation text share nothing: learning the former only makes the latter less likely.
        var train = Encoding.UTF8.GetBytes(string.Concat(Enumerable.Repeat("abab", 200))).Select(b => (int)b).ToArray();
        var validation = Encoding.UTF8.GetBytes(string.Concat(Enumerable.Repeat("xyz", 40))).Select(b => (int)b).ToArray();
        var data = new TokenDataset(train, validation, 256);
        var options = Options(50) with { EvalInterval = 1, Patience = 2, AttentionDropout = 0, ResidualDropout = 0, PeakLearningRate = 1e-2f };
        var trainer = NewTrainer(data, options);
        var evaluations = new List<EvaluationResult>();
        trainer.Run(onEvaluation: evaluations.Add);
        Assert.True(trainer.Step < 50, $"ran all {trainer.Step} steps");
        Assert.True(evaluations[^1].StopEarly);
        Assert.False(evaluations[^1].Improved);
        Assert.False(evaluations[^2].Improved);
        Assert.Equal(Math.Exp(evaluations[^1].ValidationLoss), evaluations[^1].Perplexity);
    }

    [Fact]
    public void SamplerVisitsEveryWindowOncePerEpochInAShuffledOrder()
    {
        var stream = Enumerable.Range(0, 8 * 10 + 1).Select(i => i % 256).ToArray();
        var sampler = new BatchSampler(stream, 8, seed: 3);
        Assert.Equal(10, sampler.WindowCount);
        var inputs = new int[8];
        var targets = new int[8];
        var firstEpoch = new List<int>();
        for (int i = 0; i < 10; i++)
        {
            sampler.Next(1, inputs, targets);
            Assert.Equal(inputs.Skip(1), targets.Take(7));
            firstEpoch.Add(inputs[0] / 8);
        }
        Assert.Equal(Enumerable.Range(0, 10), firstEpoch.Order());
        Assert.NotEqual(Enumerable.Range(0, 10), firstEpoch);
        sampler.Next(1, inputs, targets);
        Assert.Equal(1, sampler.Epoch);
    }

    [Fact]
    public void CorpusReadsTextFoldersAndJsonLinesAndRejectsBadInput()
    {
        string corpus = Directory.CreateDirectory(Path.Combine(_dir, "corpus")).FullName;
        Directory.CreateDirectory(Path.Combine(corpus, "nested"));
        File.WriteAllText(Path.Combine(corpus, "b.txt"), "second file");
        File.WriteAllText(Path.Combine(corpus, "a.jsonl"), "{\"text\": \"first\"}\n\n{\"text\": \"line two\", \"id\": 3}\n");
        File.WriteAllText(Path.Combine(corpus, "nested", "c.md"), "third");
        Assert.Equal(["first", "line two", "second file", "third"], TextCorpus.Load(corpus));

        string bad = Path.Combine(_dir, "bad.jsonl");
        File.WriteAllText(bad, "{\"text\": \"ok\"}\n{\"body\": \"no text\"}\n");
        Assert.Contains("bad.jsonl:2", Assert.Throws<InvalidDataException>(() => TextCorpus.Load(bad)).Message);
        File.WriteAllText(bad, "{\"text\": \"ok\"}\n{broken\n");
        Assert.Contains("bad.jsonl:2: not valid JSON", Assert.Throws<InvalidDataException>(() => TextCorpus.Load(bad)).Message);

        string binary = Path.Combine(_dir, "latin1.txt");
        File.WriteAllBytes(binary, [0x63, 0x61, 0x66, 0xE9, 0x20, 0x61]);
        Assert.Contains("not valid UTF-8", Assert.Throws<InvalidDataException>(() => TextCorpus.Load(binary)).Message);

        string empty = Path.Combine(_dir, "empty.txt");
        File.WriteAllText(empty, "  \n");
        Assert.Contains("no text", Assert.Throws<InvalidDataException>(() => TextCorpus.Load(empty)).Message);
        Assert.Throws<FileNotFoundException>(() => TextCorpus.Load(Path.Combine(_dir, "missing")));

        var tiny = TokenDataset.Create(["just a few bytes of text"], new ByteTokenEncoder(), 0.2);
        Assert.Contains("fewer than context", Assert.Throws<InvalidDataException>(() => NewTrainer(tiny, Options(4))).Message);
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
