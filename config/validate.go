package config

import (
	"crypto/tls"
	"errors"
	"io/fs"
	"net"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"
)

// validate checks what no single value can: how fields agree with each
// other, across routes, and with the file system.
func (d *decoder) validate(c *Config, root *yaml.Node) {
	top := loc{root, ""}
	d.checkListeners(c, top)
	d.checkTLS(c, top)

	if len(c.Routes) == 0 {
		if root == nil || root.Kind == yaml.MappingNode {
			at := d.where(&c.Routes, top)
			d.errorf(at.node, "routes", "at least one route is needed")
		}
		return
	}
	type hostPath struct{ host, path string }
	byName := make(map[string]int)
	byHostPath := make(map[hostPath]int)
	for i := range c.Routes {
		r := &c.Routes[i]
		rl := d.where(r, top)
		if !d.isSet(&r.Upstreams) {
			d.errorf(rl.node, join(rl.path, "upstreams"), "at least one upstream is needed")
		}
		if j, dup := byName[r.Name]; dup && (d.isSet(&r.Name) || d.isSet(&c.Routes[j].Name)) {
			at := d.where(&r.Name, rl)
			d.errorf(at.node, join(rl.path, "name"), "%q is already the name of the route at line %d", short(r.Name), d.where(&c.Routes[j], top).node.Line)
		} else if !dup {
			byName[r.Name] = i
		}
		hosts := r.Hosts
		if len(hosts) == 0 {
			hosts = []string{""}
		}
		for _, h := range hosts {
			if r.Path == "" {
				break // a bad path, reported already
			}
			k := hostPath{h, r.Path}
			j, dup := byHostPath[k]
			if !dup {
				byHostPath[k] = i
				continue
			}
			at := d.where(&r.Path, rl)
			line := d.where(&c.Routes[j], top).node.Line
			if h == "" {
				d.errorf(at.node, join(rl.path, "path"), "%q for any host is already routed by the route at line %d", r.Path, line)
			} else {
				d.errorf(at.node, join(rl.path, "path"), "%q on host %q is already routed by the route at line %d", r.Path, h, line)
			}
		}
		if r.RateLimit.RequestsPerSecond > 0 && r.RateLimit.Burst == 0 {
			at := d.where(&r.RateLimit.Burst, rl)
			d.errorf(at.node, at.path, "must be at least 1 when requests_per_second is set")
		}
		if r.WebSocket.MessagesPerSecond > 0 && r.WebSocket.MessageBurst == 0 {
			at := d.where(&r.WebSocket.MessageBurst, rl)
			d.errorf(at.node, at.path, "must be at least 1 when messages_per_second is set")
		}
	}
}

func (d *decoder) checkListeners(c *Config, top loc) {
	l := c.Listen
	if l.HTTP == "" && l.HTTPS == "" && d.isSet(&c.Listen.HTTP) {
		at := d.where(&c.Listen.HTTP, top)
		d.errorf(at.node, at.path, "http is off and https is not set: nothing would be served")
	}
	// Port 0 asks the system for a free port, different for each listener.
	if l.HTTPS != "" && l.HTTPS == l.HTTP && !anyPort(l.HTTPS) {
		at := d.where(&c.Listen.HTTPS, top)
		d.errorf(at.node, at.path, "%q is also listen.http", l.HTTPS)
	}
	if a := c.Admin.Listen; a != "" && !anyPort(a) && (a == l.HTTP || a == l.HTTPS) {
		at := d.where(&c.Admin.Listen, d.where(&c.Listen.HTTP, top))
		d.errorf(at.node, "admin.listen", "%q is also a public listener; give the admin listener its own address", a)
	}
}

// anyPort reports whether addr asks for a port chosen by the system.
func anyPort(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	return err == nil && port == "0"
}

func (d *decoder) checkTLS(c *Config, top loc) {
	t := &c.TLS
	mode := d.where(&t.Mode, d.where(&c.Listen.HTTPS, top))
	switch {
	case t.Mode == TLSOff && c.Listen.HTTPS != "":
		d.errorf(mode.node, "tls.mode", `"off" but listen.https is set: choose acme, internal or files, or remove listen.https`)
	case t.Mode != TLSOff && t.Mode != "" && c.Listen.HTTPS == "":
		d.errorf(mode.node, "tls.mode", "%q needs listen.https (e.g. \":443\")", t.Mode)
	}
	switch t.Mode {
	case TLSFiles:
		if len(t.Certificates) == 0 {
			at := d.where(&t.Certificates, mode)
			d.errorf(at.node, "tls.certificates", "files mode needs at least one {cert, key} pair")
		}
		for i := range t.Certificates {
			cf := &t.Certificates[i]
			certOK := d.checkFile(&cf.Cert, cf.Cert)
			if keyOK := d.checkFile(&cf.Key, cf.Key); certOK && keyOK {
				d.checkPair(cf)
			}
		}
	case TLSACME:
		if !hasACMEHost(c.Routes) {
			msg := "acme needs at least one route host that is not a wildcard, to get certificates for"
			if !d.isSet(&t.Mode) {
				msg = "acme (the default when listen.https is set) needs at least one route host that is not a wildcard; set tls.mode: internal for local certificates"
			}
			d.errorf(mode.node, "tls.mode", "%s", msg)
		}
	}
	if t.CARoot != "" {
		d.checkFile(&t.CARoot, t.CARoot)
	}
}

// checkFile reports when the file set at ptr, named path, is not a
// readable regular file, and returns whether it is.
func (d *decoder) checkFile(ptr *string, path string) bool {
	at, ok := d.seen[ptr]
	if !ok || path == "" {
		return false
	}
	f, err := os.Open(path)
	if err == nil {
		var st fs.FileInfo
		if st, err = f.Stat(); err == nil && st.IsDir() {
			f.Close()
			d.errorf(at.node, at.path, "%q is a directory, not a file", path)
			return false
		}
		f.Close()
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		d.errorf(at.node, at.path, "%q: no such file", path)
	case err != nil:
		var perr *fs.PathError
		if errors.As(err, &perr) {
			err = perr.Err
		}
		d.errorf(at.node, at.path, "%q: %v", path, err)
	}
	return err == nil
}

// checkPair loads a files-mode pair as sluice run will, so that a
// certificate that does not parse, or a key that is not its key, is found
// by validate (and refuses a reload) with its position, not only when the
// listener starts.
func (d *decoder) checkPair(cf *CertFile) {
	certPEM, err1 := os.ReadFile(cf.Cert)
	keyPEM, err2 := os.ReadFile(cf.Key)
	if err1 != nil || err2 != nil {
		return // checkFile has just opened them; a race with an edit
	}
	at := d.seen[&cf.Cert]
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		msg := strings.TrimPrefix(err.Error(), "tls: ")
		if strings.Contains(msg, "key input") || strings.Contains(msg, "private key") && !strings.Contains(msg, "match") {
			at = d.seen[&cf.Key]
			d.errorf(at.node, at.path, "%q: %s", cf.Key, msg)
			return
		}
		if strings.Contains(msg, "match") {
			d.errorf(at.node, at.path, "%q and %q are not a certificate and its key: %s", cf.Cert, cf.Key, msg)
			return
		}
		d.errorf(at.node, at.path, "%q: %s", cf.Cert, msg)
	}
}

func hasACMEHost(routes []Route) bool {
	for _, r := range routes {
		for _, h := range r.Hosts {
			if !strings.HasPrefix(h, "*.") {
				return true
			}
		}
	}
	return false
}
