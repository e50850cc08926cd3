package cdccache

import (
	"crypto/sha1"
	"embed"
	"encoding/hex"
)

// scripts holds copies of readers/lua/*.lua (TestLuaScriptsAreReadersLua
// keeps them identical): the read path's one round trip and the lease's
// compare-and-delete, the scripts every reader library runs.
//
//go:embed lua/read.lua lua/release.lua
var scripts embed.FS

type luaScript struct {
	source string
	sha    string
}

func mustScript(name string) luaScript {
	source, err := scripts.ReadFile("lua/" + name)
	if err != nil {
		panic("cdccache: embedded script " + name + ": " + err.Error())
	}
	sum := sha1.Sum(source)
	return luaScript{source: string(source), sha: hex.EncodeToString(sum[:])}
}

var (
	readScript    = mustScript("read.lua")
	releaseScript = mustScript("release.lua")
)
