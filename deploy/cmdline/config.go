package cmdline

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config binds a configuration struct to a YAML file and to flags, with one rule: defaults, then
// the file, then the flags given on the command line. A field takes part in the file through its
// `yaml:"key"` tag and on the command line through `flag:"name"` and `help:"text"` tags; nested
// structs are YAML sections (their flags stay flat). Field types: string, bool, int, int64, uint32,
// time.Duration, or a type whose pointer is a flag.Value (for flags) and a yaml.Unmarshaler (for
// files).
type Config struct {
	fs      *flag.FlagSet
	cfg     reflect.Value // the caller's struct (addressable)
	scratch reflect.Value // flags write here; explicitly set ones are copied over cfg
	fields  map[string][]int
}

// BindConfig registers a flag for every `flag`-tagged field of *cfg, with the field's current value
// as its default. Call Load after fs.Parse.
func BindConfig(fs *flag.FlagSet, cfg any) *Config {
	v := reflect.ValueOf(cfg)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		panic("cmdline.BindConfig: cfg must point to a struct")
	}
	c := &Config{fs: fs, cfg: v.Elem(), scratch: reflect.New(v.Elem().Type()).Elem(), fields: map[string][]int{}}
	c.scratch.Set(c.cfg)
	c.bind(c.scratch, nil)
	return c
}

var durationType = reflect.TypeOf(time.Duration(0))

func (c *Config) bind(v reflect.Value, index []int) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		fv := v.Field(i)
		idx := append(append([]int(nil), index...), i)
		name := f.Tag.Get("flag")
		if name == "" {
			if f.Type.Kind() == reflect.Struct && f.IsExported() {
				c.bind(fv, idx)
			}
			continue
		}
		help := f.Tag.Get("help")
		p := fv.Addr().Interface()
		switch {
		case f.Type == durationType:
			c.fs.DurationVar(p.(*time.Duration), name, fv.Interface().(time.Duration), help)
		case reflect.PointerTo(f.Type).Implements(reflect.TypeOf((*flag.Value)(nil)).Elem()):
			c.fs.Var(p.(flag.Value), name, help)
		default:
			switch f.Type.Kind() {
			case reflect.String:
				c.fs.StringVar((*string)(fv.Addr().UnsafePointer()), name, fv.String(), help)
			case reflect.Bool:
				c.fs.BoolVar((*bool)(fv.Addr().UnsafePointer()), name, fv.Bool(), help)
			case reflect.Int:
				c.fs.IntVar((*int)(fv.Addr().UnsafePointer()), name, int(fv.Int()), help)
			case reflect.Int64:
				c.fs.Int64Var((*int64)(fv.Addr().UnsafePointer()), name, fv.Int(), help)
			case reflect.Uint32:
				c.fs.Var(uint32Value{fv}, name, help)
			default:
				panic(fmt.Sprintf("cmdline.BindConfig: field %s (flag -%s) has unsupported type %s", f.Name, name, f.Type))
			}
		}
		c.fields[name] = idx
	}
}

type uint32Value struct{ v reflect.Value }

func (u uint32Value) String() string {
	if !u.v.IsValid() {
		return "0"
	}
	return fmt.Sprint(u.v.Uint())
}

func (u uint32Value) Set(s string) error {
	var n uint32
	if _, err := fmt.Sscan(s, &n); err != nil {
		return fmt.Errorf("want a number from 0 to 4294967295")
	}
	u.v.SetUint(uint64(n))
	return nil
}

// Load reads the YAML file at path over the defaults (path "" reads nothing; a missing file is an
// error unless optional), then applies the flags given on the command line.
func (c *Config) Load(path string, optional bool) error {
	if path != "" {
		err := LoadYAML(path, c.cfg.Addr().Interface())
		if err != nil && !(optional && errors.Is(err, os.ErrNotExist)) {
			return err
		}
	}
	c.fs.Visit(func(f *flag.Flag) {
		if idx, ok := c.fields[f.Name]; ok {
			c.cfg.FieldByIndex(idx).Set(c.scratch.FieldByIndex(idx))
		}
	})
	return nil
}

// LoadYAML decodes the YAML file at path into *cfg. A key that no field of cfg's type names is an
// error "path:line:column: unknown key ..." listing the keys allowed there; other errors name the
// file too.
func LoadYAML(path string, cfg any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read configuration: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if len(doc.Content) == 0 {
		return nil // empty file: defaults
	}
	if err := checkKeys(path, doc.Content[0], reflect.TypeOf(cfg).Elem(), ""); err != nil {
		return err
	}
	if err := doc.Content[0].Decode(cfg); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

var unmarshalerType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()

// checkKeys walks a mapping node against a struct type.
func checkKeys(path string, n *yaml.Node, t reflect.Type, section string) error {
	if t.Kind() != reflect.Struct || reflect.PointerTo(t).Implements(unmarshalerType) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("%s:%d:%d: %s must be a mapping of keys to values", path, n.Line, n.Column, orTop(section))
	}
	keys := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		k, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if k != "" && k != "-" {
			keys[k] = f.Type
		}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		ft, ok := keys[k.Value]
		if !ok {
			known := make([]string, 0, len(keys))
			for name := range keys {
				known = append(known, name)
			}
			sort.Strings(known)
			return fmt.Errorf("%s:%d:%d: unknown key %q in %s (known: %s)", path, k.Line, k.Column, k.Value, orTop(section), strings.Join(known, ", "))
		}
		if err := checkKeys(path, v, ft, strings.TrimPrefix(section+"."+k.Value, ".")); err != nil {
			return err
		}
	}
	return nil
}

func orTop(section string) string {
	if section == "" {
		return "the top level"
	}
	return section
}
