"""What a store's files take on disk once hard links are shared, and its ``.links``."""
import os
import stat


def unique_files(root):
    """inode -> size of every file and symlink under ``ROOT/nix/store``, each inode once."""
    seen = {}
    for directory, dirs, files in os.walk(os.path.join(str(root), 'nix/store')):
        for name in dirs + files:       # a symlink to a directory is among dirs
            info = os.lstat(os.path.join(directory, name))
            if not stat.S_ISDIR(info.st_mode):
                seen[info.st_ino] = info.st_size
    return seen


def unique_bytes(root):
    """Bytes the files of the store take, each inode once."""
    return sum(unique_files(root).values())


def links(root):
    """name -> link count of each entry of ``ROOT/nix/store/.links`` ({} without one)."""
    directory = os.path.join(str(root), 'nix/store/.links')
    if not os.path.isdir(directory):
        return {}
    return dict((name, os.lstat(os.path.join(directory, name)).st_nlink)
                for name in os.listdir(directory))
