// Package policy reads keyguard's protection policy and maps it onto the kernel's names for things.
//
// The file format is documented in README.md next to this file (the section meant for the project
// README) and shown by testdata/example.yaml.
//
// Three steps, kept apart so that parsing stays pure:
//
//   - Parse(name, data) checks syntax and every value; Load(path) reads the file, parses it and also
//     checks the executables against the filesystem. Both return every problem at once
//     (errors.Join of *Error), each reading "file:line:col: key.path: what is wrong (what to do)".
//   - Resolve(p, cgroupRoot) maps a Policy onto kernel identities at one moment: executables and key
//     files to FileIDs (superblock device in the kernel's major<<20|minor encoding + inode), cgroup
//     selectors to cgroup ids (the cgroup2 directory's inode number), accessors to FileID + uid.
//     ResolveExecutables, ResolveKeyFiles, ResolveCgroups and ResolveAccessors do one kind each.
//     Resolved.Maps() flattens the result into the contents of the BPF maps.
//   - A Watcher keeps the resolution current with inotify: it calls back when a key file appears or
//     is replaced, an executable is replaced, or a selected cgroup is created or re-created.
//
// Nothing here keeps global state; a Policy is immutable after Parse.
package policy
