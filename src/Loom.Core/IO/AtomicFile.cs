namespace Loom.Core.IO;

/// <summary>Replaces a file all at once, so a crash or a full disk mid-write never leaves a half-written file behind.</summary>
public static class AtomicFile
{
    /// <summary>
    /// Writes through <paramref name="temporaryPath"/> (same folder as <paramref name="path"/>, so the rename cannot cross
    /// file systems), flushes it to disk and renames it over <paramref name="path"/>. If anything fails the temporary is
    /// removed, the exception propagates, and whatever was at <paramref name="path"/> stays as it was.
    /// </summary>
    public static void Write(string path, string temporaryPath, Action<FileStream> write)
    {
        try
        {
            using (var file = new FileStream(temporaryPath, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
            {
                write(file);
                file.Flush(flushToDisk: true);
            }
            File.Move(temporaryPath, path, overwrite: true);
        }
        catch
        {
            TryDelete(temporaryPath);
            throw;
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
