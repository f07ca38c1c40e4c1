namespace Loom.Core.IO;

/// <summary>
/// A write-only stream that forwards every write to another stream and counts the bytes, so writers can check sizes and
/// padding without seeking; subclasses see each write first (to hash it, for example).
/// </summary>
public class CountingWriteStream(Stream inner) : Stream
{
    public long Written { get; private set; }

    /// <summary>Called with every write, before it is forwarded.</summary>
    protected virtual void Observe(ReadOnlySpan<byte> bytes) { }

    public override bool CanRead => false;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => Written;
    public override long Position { get => Written; set => throw new NotSupportedException(); }
    public override void Flush() => inner.Flush();
    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));
    public override void WriteByte(byte value) => Write(new ReadOnlySpan<byte>(in value));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        Observe(buffer);
        inner.Write(buffer);
        Written += buffer.Length;
    }
}
