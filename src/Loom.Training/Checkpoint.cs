using Loom.Core.IO;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;

namespace Loom.Training;

/// <summary>
/// Training checkpoints: model shape, weights, AdamW moments, step counters, data-sampler position and generator
/// states, closed by a SHA-256 of everything before it. Written to a temporary file beside the target, flushed to
/// disk, then renamed over it, so a failed write (full disk, kill) leaves the previous checkpoint intact.
/// </summary>
public static class Checkpoint
{
    private static readonly byte[] Magic = "LOOMCKPT"u8.ToArray();
    private const int Version = 1;
    private const int HashLength = 32;

    public static void Save(string path, Trainer trainer)
    {
        string full = Path.GetFullPath(path);
        string temporary = full + ".tmp";
        try
        {
            AtomicFile.Write(full, temporary, file =>
            {
                using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
                using (var writer = new BinaryWriter(new HashingStream(file, hash), Encoding.UTF8, leaveOpen: true))
                    Write(writer, trainer);
                file.Write(hash.GetHashAndReset());
            });
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"could not write checkpoint '{path}' ({e.Message}); the previous checkpoint, if any, is unchanged", e);
        }
    }

    /// <summary>Reads the model shape stored in a checkpoint (to build the model before <see cref="Restore"/>).</summary>
    public static ModelShape ReadShape(string path)
    {
        using var reader = new BinaryReader(new MemoryStream(ReadVerified(path)));
        return ReadHeader(reader, path);
    }

    /// <summary>Loads a checkpoint into a trainer built with the same shape, data and options: training continues exactly.</summary>
    public static void Restore(string path, Trainer trainer)
    {
        using var reader = new BinaryReader(new MemoryStream(ReadVerified(path)));
        var shape = ReadHeader(reader, path);
        if (shape != trainer.Model.Shape)
            throw new InvalidDataException($"checkpoint '{path}' holds a model of shape {shape}, not {trainer.Model.Shape}");
        var state = ReadState(reader);
        ReadParameters(reader, path, trainer.Model.Parameters);
        ReadFloats(reader, trainer.Optimizer.FirstMoment);
        ReadFloats(reader, trainer.Optimizer.SecondMoment);
        trainer.RestoreState(state);
    }

    /// <summary>
    /// The model saved in a checkpoint, without optimizer or data state: the start of a new run on other data (continued
    /// pretraining, fine-tuning), which gets a fresh optimizer and learning-rate schedule.
    /// </summary>
    public static Decoder LoadModel(string path)
    {
        using var reader = new BinaryReader(new MemoryStream(ReadVerified(path)));
        var model = new Decoder(ReadHeader(reader, path));
        ReadState(reader); // read past: a new run starts its own
        ReadParameters(reader, path, model.Parameters);
        return model;
    }

    private static TrainerState ReadState(BinaryReader reader) => new(
        Step: reader.ReadInt64(),
        OptimizerStep: reader.ReadInt64(),
        Sampler: new SamplerState(reader.ReadInt32(), reader.ReadInt32(), reader.ReadUInt64()),
        DropoutKeyState: reader.ReadUInt64(),
        BestValidationLoss: reader.ReadDouble(),
        EvaluationsWithoutImprovement: reader.ReadInt32());

    private static void ReadParameters(BinaryReader reader, string path, float[] parameters)
    {
        int count = reader.ReadInt32();
        if (count != parameters.Length)
            throw new InvalidDataException($"checkpoint '{path}' holds {count} parameters, the model has {parameters.Length}");
        ReadFloats(reader, parameters);
    }

    /// <summary>Builds the model and trainer from a checkpoint and restores it.</summary>
    public static Trainer Resume(string path, TokenDataset data, TrainingOptions options)
    {
        var trainer = new Trainer(new Decoder(ReadShape(path)), data, options);
        Restore(path, trainer);
        return trainer;
    }

    private static void Write(BinaryWriter writer, Trainer trainer)
    {
        var s = trainer.Model.Shape;
        writer.Write(Magic);
        writer.Write(Version);
        foreach (int value in new[] { s.VocabSize, s.Dim, s.Layers, s.Heads, s.KvHeads, s.Hidden, s.Context }) writer.Write(value);
        writer.Write(s.NormEpsilon);
        writer.Write(s.RopeBase);
        var state = trainer.CaptureState();
        writer.Write(state.Step);
        writer.Write(state.OptimizerStep);
        writer.Write(state.Sampler.Epoch);
        writer.Write(state.Sampler.Position);
        writer.Write(state.Sampler.EpochSeed);
        writer.Write(state.DropoutKeyState);
        writer.Write(state.BestValidationLoss);
        writer.Write(state.EvaluationsWithoutImprovement);
        writer.Write(trainer.Model.Parameters.Length);
        writer.Write(MemoryMarshal.AsBytes(trainer.Model.Parameters.AsSpan()));
        writer.Write(MemoryMarshal.AsBytes(trainer.Optimizer.FirstMoment.AsSpan()));
        writer.Write(MemoryMarshal.AsBytes(trainer.Optimizer.SecondMoment.AsSpan()));
    }

    private static byte[] ReadVerified(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"checkpoint '{path}' does not exist", path);
        byte[] bytes = File.ReadAllBytes(path);
        if (bytes.Length < Magic.Length + HashLength || !bytes.AsSpan(0, Magic.Length).SequenceEqual(Magic))
            throw new InvalidDataException($"'{path}' is not a Loom training checkpoint");
        var body = bytes.AsSpan(0, bytes.Length - HashLength);
        if (!SHA256.HashData(body).AsSpan().SequenceEqual(bytes.AsSpan(bytes.Length - HashLength)))
            throw new InvalidDataException($"checkpoint '{path}' is corrupt or truncated (checksum mismatch)");
        return bytes[..^HashLength];
    }

    private static ModelShape ReadHeader(BinaryReader reader, string path)
    {
        reader.ReadBytes(Magic.Length);
        int version = reader.ReadInt32();
        if (version != Version) throw new InvalidDataException($"checkpoint '{path}' has version {version}; this Loom reads version {Version}");
        var shape = new ModelShape
        {
            VocabSize = reader.ReadInt32(), Dim = reader.ReadInt32(), Layers = reader.ReadInt32(), Heads = reader.ReadInt32(),
            KvHeads = reader.ReadInt32(), Hidden = reader.ReadInt32(), Context = reader.ReadInt32(),
            NormEpsilon = reader.ReadSingle(), RopeBase = reader.ReadSingle(),
        };
        try
        {
            shape.Validate();
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"checkpoint '{path}' holds an invalid model shape: {e.Message}", e);
        }
        return shape;
    }

    private static void ReadFloats(BinaryReader reader, float[] target)
    {
        var bytes = MemoryMarshal.AsBytes(target.AsSpan());
        if (reader.Read(bytes) != bytes.Length) throw new InvalidDataException("checkpoint ends early");
    }

    /// <summary>Passes writes through to a stream while feeding them to a hash.</summary>
    private sealed class HashingStream(Stream inner, IncrementalHash hash) : CountingWriteStream(inner)
    {
        protected override void Observe(ReadOnlySpan<byte> bytes) => hash.AppendData(bytes);
    }
}
